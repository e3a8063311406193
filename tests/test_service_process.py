"""The service as a process: configuration from flags and environment, the generated stubs,
SIGTERM, JSON logs, and the `sdcore client` command."""

import argparse
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import grpc
import pytest
from engine_double import EngineDouble, seed_colour
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from sdcore.service import config
from sdcore.service.gen import sdcore_service_pb2 as pb
from sdcore.service.gen import sdcore_service_pb2_grpc
from service_harness import ServerThread, make_config

ROOT = pathlib.Path(__file__).resolve().parent.parent


def parse(argv, env):
    parser = config.add_arguments(argparse.ArgumentParser())
    return config.from_args(parser.parse_args(argv), environ=env)


# -- configuration --------------------------------------------------------------------------


def test_defaults():
    cfg = parse([], {})
    assert (cfg.port, cfg.enable_reflection, cfg.require_api_key, cfg.use_tls) == (
        50051,
        True,
        False,
        False,
    )
    assert cfg.metrics_port == 0 and cfg.max_concurrent_rpcs is None


def make_tls_pair(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        + ["-nodes", "-days", "1", "-subj", "/CN=localhost"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_environment_is_read(tmp_path):
    cert, key = make_tls_pair(tmp_path)
    env = {
        "GRPC_PORT": "6000",
        "GRPC_MAX_WORKERS": "3",
        "GRPC_MAX_MESSAGE_SIZE": "2000000",
        "GRPC_MAX_CONCURRENT_RPCS": "50",
        "GRPC_ENABLE_REFLECTION": "false",
        "GRPC_REQUIRE_API_KEY": "yes",
        "GRPC_API_KEY": "k1",
        "GRPC_USE_TLS": "1",
        "GRPC_CERT_FILE": str(cert),
        "GRPC_KEY_FILE": str(key),
    }
    cfg = parse([], env)
    assert (cfg.port, cfg.max_workers, cfg.max_message_size, cfg.max_concurrent_rpcs) == (
        6000,
        3,
        2000000,
        50,
    )
    assert not cfg.enable_reflection and cfg.require_api_key and cfg.api_key == "k1"
    assert cfg.use_tls and cfg.cert_file == str(cert) and cfg.key_file == str(key)


def test_flags_win_over_environment():
    env = {
        "GRPC_PORT": "6000",
        "GRPC_ENABLE_REFLECTION": "false",
        "GRPC_API_KEY": "env",
        "GRPC_REQUIRE_API_KEY": "true",
    }
    cfg = parse(["--port", "7000", "--reflection", "--api-key", "flag"], env)
    assert cfg.port == 7000 and cfg.enable_reflection and cfg.api_key == "flag"
    assert cfg.require_api_key
    cfg = parse(["--no-require-api-key"], {"GRPC_REQUIRE_API_KEY": "true"})
    assert not cfg.require_api_key and cfg.api_key is None


@pytest.mark.parametrize(
    "env,argv,message",
    [
        ({"GRPC_PORT": "abc"}, [], "GRPC_PORT: 'abc' is not an integer"),
        ({"GRPC_PORT": "70000"}, [], "GRPC_PORT"),
        ({"GRPC_MAX_WORKERS": "0"}, [], "GRPC_MAX_WORKERS"),
        ({"GRPC_MAX_MESSAGE_SIZE": "10"}, [], "GRPC_MAX_MESSAGE_SIZE"),
        ({"GRPC_MAX_CONCURRENT_RPCS": "-1"}, [], "GRPC_MAX_CONCURRENT_RPCS"),
        (
            {"GRPC_ENABLE_REFLECTION": "maybe"},
            [],
            "GRPC_ENABLE_REFLECTION: 'maybe' is not a boolean",
        ),
        ({"GRPC_REQUIRE_API_KEY": "true"}, [], "GRPC_API_KEY"),
        ({"GRPC_USE_TLS": "true"}, [], "GRPC_CERT_FILE"),
        (
            {"GRPC_USE_TLS": "true", "GRPC_CERT_FILE": "/nonexistent.pem", "GRPC_KEY_FILE": "/x"},
            [],
            "'/nonexistent.pem' is not a readable file",
        ),
        ({}, ["--queue-size", "0"], "--queue-size"),
        ({}, ["--max-batch-size", "0"], "--max-batch-size"),
        ({}, ["--metrics-port", "50051"], "--metrics-port"),
        ({}, ["--device", "tpu"], "--device"),
        # gRPC's limits are signed 32-bit: 2^31 used to end in an OverflowError traceback
        ({"GRPC_MAX_MESSAGE_SIZE": str(2**31)}, [], "GRPC_MAX_MESSAGE_SIZE"),
        # too small for any image: every Generate used to do its work and fail on sending
        ({"GRPC_MAX_MESSAGE_SIZE": "1024"}, [], "GRPC_MAX_MESSAGE_SIZE"),
        # a key with checking turned off would accept anyone
        ({"GRPC_API_KEY": "k"}, ["--no-require-api-key"], "accept any caller"),
        ({"GRPC_API_KEY": "k", "GRPC_REQUIRE_API_KEY": "false"}, [], "drop one of the two"),
        ({"SDCORE_MAX_REQUEST_COST": "0"}, [], "SDCORE_MAX_REQUEST_COST"),
        ({"SDCORE_MAX_REQUEST_COST": "nan"}, [], "SDCORE_MAX_REQUEST_COST"),
        ({}, ["--max-request-cost", "10", "--max-queue-cost", "5"], "--max-queue-cost"),
        ({"SDCORE_GRACE_PERIOD": "soon"}, [], "SDCORE_GRACE_PERIOD: 'soon' is not a number"),
    ],
)
def test_bad_configuration_is_a_clear_error(env, argv, message):
    with pytest.raises(config.ConfigError, match=message.replace("(", r"\(")):
        parse(argv, env)


def test_a_key_alone_turns_checking_on():
    # an API key without GRPC_REQUIRE_API_KEY used to leave every RPC open
    cfg = parse([], {"GRPC_API_KEY": "k"})
    assert cfg.require_api_key and cfg.api_key == "k"
    assert not parse([], {}).require_api_key


def test_metrics_bind_the_host_asked_for():
    assert parse(["--host", "127.0.0.1"], {}).metrics_host == "127.0.0.1"
    assert parse(["--host", "127.0.0.1", "--metrics-host", "0.0.0.0"], {}).metrics_host == (
        "0.0.0.0"
    )


def test_cost_budget_defaults_follow_the_device():
    cpu, gpu = parse([], {}), parse(["--device", "cuda"], {})
    assert cpu.max_request_cost == config.DEFAULT_MAX_REQUEST_COST["cpu"]
    assert gpu.max_request_cost == config.DEFAULT_MAX_REQUEST_COST["cuda"]
    assert cpu.max_queue_cost == config.DEFAULT_QUEUE_COST_REQUESTS * cpu.max_request_cost
    env = {"SDCORE_MAX_REQUEST_COST": "2.5", "SDCORE_MAX_QUEUE_COST": "7"}
    cfg = parse([], env)
    assert (cfg.max_request_cost, cfg.max_queue_cost) == (2.5, 7.0)


def test_bad_tls_files_are_a_clear_error(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    key.write_text("not a key")
    env = {"GRPC_USE_TLS": "1", "GRPC_CERT_FILE": str(cert), "GRPC_KEY_FILE": str(key)}
    with pytest.raises(config.ConfigError, match="TLS: cannot use cert file"):
        parse([], env)
    proc = subprocess.run(
        [sys.executable, "-m", "sdcore.service"],
        env=dict(os.environ, **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "TLS: cannot use cert file" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bad_environment_stops_the_process_at_start():
    env = dict(os.environ, GRPC_MAX_WORKERS="many")
    proc = subprocess.run(
        [sys.executable, "-m", "sdcore.service"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "GRPC_MAX_WORKERS: 'many' is not an integer" in proc.stderr


# -- generated stubs ------------------------------------------------------------------------


def test_generated_stubs_are_current():
    pytest.importorskip("grpc_tools", reason="grpcio-tools regenerates the stubs")
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gen_protos
    finally:
        sys.path.pop(0)
    committed = ROOT / "service" / "gen"
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_bytes() for p in gen_protos.generate(tmp)}
    current = {p.name: p.read_bytes() for p in committed.iterdir() if p.is_file()}
    assert sorted(fresh) == sorted(current), "service/gen/ has other files than protoc writes"
    stale = [name for name in fresh if fresh[name] != current[name]]
    assert not stale, f"stale stubs {stale}: run python tools/gen_protos.py"


# -- the process: SIGTERM and logs ----------------------------------------------------------


def start_process(*argv, env=None):
    env = {**os.environ, "DOUBLE_STEP_SECONDS": "0.02", **(env or {})}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "serve_double.py"),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *argv,
        ],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        entry = json.loads(line)
        if entry["msg"] == "listening":
            return proc, entry["port"], lines
    proc.kill()
    raise AssertionError("the server did not start:\n" + "".join(lines))


def test_sigterm_finishes_in_flight_work_then_exits():
    proc, port, lines = start_process("--grace-period", "20")
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 30
        while health.Check(health_pb2.HealthCheckRequest()).status != (
            health_pb2.HealthCheckResponse.SERVING
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stub = sdcore_service_pb2_grpc.SdcoreStub(channel)
        future = stub.Generate.future(pb.GenerateRequest(prompt="x", seed=3, steps=40))
        while stub.GetStatus(pb.StatusRequest()).jobs_in_flight == 0:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        reply = future.result(timeout=30)
        arr = Image.open(io.BytesIO(reply.images[0].png)).convert("RGB")
        assert (pytest.importorskip("numpy").asarray(arr) == seed_colour(3)).all()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines += proc.stderr.readlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    messages = [e["msg"] for e in entries]
    assert "shutting down" in messages and messages[-1] == "stopped"
    rpc = [e for e in entries if e["msg"] == "rpc" and e["rpc"] == "Generate"]
    assert rpc and rpc[0]["code"] == "OK" and rpc[0]["seconds"] > 0


def test_model_load_failure_exits_nonzero():
    """Without an engine that loads, `python -m sdcore.service` says why and exits 1."""
    env = dict(os.environ)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sdcore.service",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--model",
            "/nonexistent/model.safetensors",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    errors = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert any(e["msg"] == "cannot load the model" for e in errors), proc.stderr


# -- sdcore client --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served():
    with ServerThread(make_config(require_api_key=True, api_key="k"), [EngineDouble()]) as srv:
        yield srv


def test_client_generate_saves_pngs(served, tmp_path, capsys):
    from sdcore.cli import main

    out = tmp_path / "out.png"
    rc = main(
        [
            "client",
            "generate",
            "a red circle",
            "-o",
            str(out),
            "--server",
            served.address,
            "--api-key",
            "k",
            "--seed",
            "21",
            "--num-images",
            "2",
            "--steps",
            "3",
        ]
    )
    assert rc == 0
    for i in range(2):
        arr = Image.open(tmp_path / f"out-{i}.png").convert("RGB")
        assert (pytest.importorskip("numpy").asarray(arr) == seed_colour(21 + i)).all()
    assert "seed 22" in capsys.readouterr().out


def test_client_stream_shows_progress(served, tmp_path, capsys):
    from sdcore.cli import main

    out = tmp_path / "one.png"
    rc = main(
        [
            "client",
            "generate",
            "x",
            "-o",
            str(out),
            "--server",
            served.address,
            "--api-key",
            "k",
            "--stream",
            "--steps",
            "5",
            "--seed",
            "1",
        ]
    )
    assert rc == 0 and out.exists()
    err = capsys.readouterr().err
    assert "queued at position 0" in err and "5/5" in err


def test_client_reports_errors(served, tmp_path, capsys):
    from sdcore.cli import main

    rc = main(
        [
            "client",
            "generate",
            "x",
            "-o",
            str(tmp_path / "o.png"),
            "--server",
            served.address,
            "--api-key",
            "k",
            "--width",
            "13",
        ]
    )
    assert rc == 1 and "INVALID_ARGUMENT: width" in capsys.readouterr().err
    rc = main(["client", "status", "--server", served.address])
    assert rc == 1 and "UNAUTHENTICATED" in capsys.readouterr().err


def test_client_status(served, capsys):
    from sdcore.cli import main

    assert main(["client", "status", "--server", served.address, "--api-key", "k"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "double" and info["models"][0]["name"] == "double"
    assert info["queue_depth"] == 0 and int(info["rss_bytes"]) > 0


# -- bench/load.py --------------------------------------------------------------------------


def test_load_bench_runs_and_compares_batching():
    proc = subprocess.run(
        [
            sys.executable,
            "bench/load.py",
            "--start",
            "--server-cmd",
            f"{sys.executable} tests/serve_double.py",
            "--compare-batching",
            "--clients",
            "4",
            "--duration",
            "1",
            "--steps",
            "5",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "max batch 4:" in out and "max batch 1:" in out and "batching on/off:" in out
    results = json.loads(out[out.index("{") :])
    for stats in results.values():
        assert stats["images"] > 0 and stats["rejections"] == 0 and stats["rss_end_mib"] > 0
