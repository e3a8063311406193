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
