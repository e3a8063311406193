"""`sdcore generate` from the command line, on the shipped model."""

import argparse
import os
import socket
import subprocess
import sys

import pytest
from PIL import Image

from sdcore.cli import build_parser, main
from sdcore.pipeline import DEFAULT_MODEL, SHIPPED_MODEL_GUIDANCE
from sdcore.request import DEFAULT_GUIDANCE
from sdcore.samplers import SAMPLERS


def _parameters(path):
    return Image.open(path).info["parameters"]


def test_generate_guidance_default_follows_the_model(tmp_path, capsys):
    # the shipped model is evaluated at guidance 5; any other model gets the usual 7.5
    shipped = tmp_path / "shipped.png"
    args = ["generate", "a red circle", "--steps", "2", "--seed", "3", "-o"]
    assert main(args + [str(shipped)]) == 0
    assert f"CFG scale: {SHIPPED_MODEL_GUIDANCE:g}," in _parameters(shipped)

    # the default is the model folder's (its sdcore.json), not the path's: the same
    # components without that file get the usual 7.5, and with another value, that one
    folder = tmp_path / "model"
    folder.mkdir()
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (folder / part).symlink_to(os.path.join(DEFAULT_MODEL, part), target_is_directory=True)
    other = tmp_path / "other.png"
    assert main(args + [str(other), "--model", str(folder)]) == 0
    assert f"CFG scale: {DEFAULT_GUIDANCE:g}," in _parameters(other)
    assert "Model: model," in _parameters(other)
    (folder / "sdcore.json").write_text('{"name": "mine", "guidance_scale": 6.5}')
    assert main(args + [str(other), "--model", str(folder)]) == 0
    assert "CFG scale: 6.5," in _parameters(other) and "Model: mine," in _parameters(other)

    given = tmp_path / "given.png"
    assert main(args + [str(given), "--cfg", "3"]) == 0
    assert "CFG scale: 3," in _parameters(given)
    assert main(args + [str(given), "--guidance-scale", "4"]) == 0
    assert "CFG scale: 4," in _parameters(given)
    assert "seed 3" in capsys.readouterr().out


def _one_line_error(text):
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_generate_checks_the_output_folder_before_any_work(tmp_path, capsys, monkeypatch):
    import sdcore.pipeline

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(sdcore.pipeline.Pipeline, "from_pretrained", no_load)
    missing = tmp_path / "missing" / "dir" / "x.png"
    assert main(["generate", "a red circle", "-o", str(missing)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert line.startswith("sdcore: --output:") and "does not exist" in line
    assert main(["generate", "x", "-o", str(tmp_path)]) == 2  # a folder, not a file
    assert "is a folder" in _one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "missing").exists()


def test_generate_refuses_a_bad_field_naming_it(tmp_path, capsys):
    assert main(["generate", "x", "-o", str(tmp_path / "o.png"), "--width", "72"]) == 2
    assert _one_line_error(capsys.readouterr().err).startswith("sdcore: width: must be a multiple")


def test_client_generate_checks_the_output_folder_before_calling(tmp_path, capsys):
    missing = tmp_path / "missing" / "x.png"
    # nothing listens on port 1: a call would end in UNAVAILABLE and status 1
    args = ["client", "generate", "x", "-o", str(missing), "--server", "127.0.0.1:1"]
    assert main(args) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert line.startswith("sdcore client: --output:") and "does not exist" in line
    assert not missing.parent.exists()


def _subparser(parser, *names):
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


COMMANDS = [("info",), ("generate",), ("serve",), ("client", "generate"), ("client", "status")]
COMMANDS += [("demo",)]


@pytest.mark.parametrize("names", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_flag_has_help(names):
    parser = _subparser(build_parser(), *names)
    missing = [
        a.option_strings or a.dest
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not a.help
    ]
    assert missing == []


def test_generate_and_client_generate_spell_their_options_alike():
    local = _subparser(build_parser(), "generate")
    remote = _subparser(build_parser(), "client", "generate")

    def options(parser):
        return {a.dest: set(a.option_strings) for a in parser._actions if a.option_strings}

    ours, theirs = options(local), options(remote)
    shared = set(ours) & set(theirs)
    assert {"negative_prompt", "steps", "guidance_scale", "seed", "sampler", "num_images"} <= shared
    for dest in shared - {"help", "model"}:
        assert ours[dest] == theirs[dest], dest
    for parser in (local, remote):
        sampler = next(a for a in parser._actions if a.dest == "sampler")
        assert list(sampler.choices) == list(SAMPLERS)
        assert all(name in parser.format_help() for name in SAMPLERS)


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize(
    "command",
    [
        ["serve", "--host", "127.0.0.1", "--port", "{port}"],
        ["demo", "--host", "127.0.0.1", "--port", "{port}"],
        ["demo", "--port", "0", "--grpc-port", "{port}"],
    ],
    ids=["serve", "demo-page", "demo-grpc"],
)
def test_a_port_in_use_is_one_line_and_status_2(busy_port, command):
    argv = [part.format(port=busy_port) for part in command]
    result = subprocess.run(
        [sys.executable, "-m", "sdcore.cli", *argv], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and str(busy_port) in errors[0], result.stderr
    assert "Traceback" not in result.stderr
