"""`sdcore generate` from the command line, on the shipped model."""

import os

from PIL import Image

from sdcore.cli import main
from sdcore.pipeline import DEFAULT_MODEL, GUIDANCE, SHIPPED_MODEL_GUIDANCE


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
    assert f"CFG scale: {GUIDANCE:g}," in _parameters(other)
    assert "Model: model," in _parameters(other)
    (folder / "sdcore.json").write_text('{"name": "mine", "guidance_scale": 6.5}')
    assert main(args + [str(other), "--model", str(folder)]) == 0
    assert "CFG scale: 6.5," in _parameters(other) and "Model: mine," in _parameters(other)

    given = tmp_path / "given.png"
    assert main(args + [str(given), "--cfg", "3"]) == 0
    assert "CFG scale: 3," in _parameters(given)
    assert "seed 3" in capsys.readouterr().out
