"""How the extension was built: the CUDA library is present and fully linked when the
build was asked for it, and the package imports without a GPU either way."""

import ctypes
import os

import pytest

import sdcore


def test_import_without_gpu_reports_reason():
    available, reason = sdcore.cuda_available()
    assert isinstance(available, bool)
    assert available or reason


@pytest.mark.skipif(os.environ.get("SDCORE_CUDA") != "1", reason="CUDA build not requested")
def test_cuda_library_built_and_linked():
    info = sdcore._C.build_info()
    assert info["cuda_built"]
    lib = os.path.join(os.path.dirname(sdcore.__file__), "libsdcore_cuda.so")
    assert os.path.exists(lib)
    # RTLD_NOW resolves every symbol: a missing cuBLAS or CUDA runtime symbol fails here
    handle = ctypes.CDLL(lib, mode=os.RTLD_NOW | os.RTLD_LOCAL)
    assert hasattr(handle, "sd_cuda_lib_init")


def test_info_says_why_cuda_was_not_built(capsys):
    import json

    from sdcore.cli import main

    info = sdcore._C.build_info()
    assert main(["info"]) == 0
    shown = json.loads(capsys.readouterr().out)
    if info["cuda_built"]:
        assert info["cuda_not_built_because"] == ""
        return
    why = info["cuda_not_built_because"]
    # the reason the build recorded, with what to do about it
    assert any(k in why for k in ("SDCORE_CUDA=0", "nvcc not found", "cuBLAS"))
    assert any(k in why for k in ("rebuild", "install"))
    if not shown["cuda_available"]:
        assert shown["cuda_unavailable_because"] == why


@pytest.mark.parametrize(
    "nvcc,cublas,mode,words",
    [
        (None, None, "auto", ["nvcc not found", "install the CUDA toolkit"]),
        ("/opt/cuda/bin/nvcc", None, "auto", ["nvcc found (/opt/cuda/bin/nvcc)", "cuBLAS"]),
        ("/opt/cuda/bin/nvcc", None, "0", ["SDCORE_CUDA=0"]),
    ],
)
def test_setup_records_why_cuda_is_left_out(monkeypatch, nvcc, cublas, mode, words):
    import importlib.util
    import pathlib
    import sys

    import setuptools

    root = pathlib.Path(__file__).resolve().parent.parent
    monkeypatch.setattr(setuptools, "setup", lambda **kw: None)
    monkeypatch.setattr(sys, "argv", ["setup.py"])
    spec = importlib.util.spec_from_file_location("sdcore_setup", root / "setup.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.chdir(root)
    spec.loader.exec_module(module)
    monkeypatch.setenv("SDCORE_CUDA", mode)
    monkeypatch.setattr(module, "find_nvcc", lambda: nvcc)
    monkeypatch.setattr(module, "find_cublas", lambda path: cublas)
    command = module.BuildExt.__new__(module.BuildExt)
    assert command.plan_cuda() is None
    for word in words:
        assert word in command.cuda_skipped
