"""Build of the extension sdcore._C and, when CUDA is available, libsdcore_cuda.so.

SDCORE_CUDA=auto (default): build the CUDA backend when nvcc and cuBLAS are found.
SDCORE_CUDA=1: the same, but fail if either is missing.  SDCORE_CUDA=0: CPU only.
SDCORE_CUDA_ARCH: nvcc -gencode targets, default sm_80 and sm_90 plus compute_90 PTX.
"""

import concurrent.futures
import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import numpy
import scipy_openblas32
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def log(msg):
    print(f"sdcore build: {msg}", file=sys.stderr, flush=True)


def cuda_mode():
    mode = os.environ.get("SDCORE_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"SDCORE_CUDA must be auto, 0 or 1, not {mode!r}")
    return mode


# C headers under csrc/ that kernel files include
CUDA_SHARED_HEADERS = ["sdcore.h", "cuda_abi.h", "core/sampler_ops.h"]
# Flags for one kernel file. sampler.cu runs the CPU samplers' expressions and must round
# as the CPU does: no fused multiply-add.
CUDA_FILE_FLAGS = {"sampler.cu": ["-fmad=false"]}


def find_nvcc():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda/bin/nvcc"
    return None


def site_dirs():
    """Every site-packages this build can see, the target venv's included.

    Under pip's build isolation the target environment is not on sys.path, but a
    venv-based install names it in VIRTUAL_ENV."""
    dirs = [p for p in sys.path if p.endswith("site-packages")]
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:
        dirs += glob.glob(os.path.join(venv, "lib", "python3*", "site-packages"))
    dirs.append(sysconfig.get_paths()["purelib"])
    return list(dict.fromkeys(dirs))


def find_cublas(nvcc):
    """(include_dir, lib_dir, lib_file, lt_lib_file) of cuBLAS and cuBLASLt (which ship
    together): the toolkit's, else the PyPI wheel's."""
    candidates = []
    cuda_home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    for home in (cuda_home, "/usr/local/cuda"):
        for lib in ("lib64", "lib", "targets/x86_64-linux/lib"):
            candidates.append((os.path.join(home, "include"), os.path.join(home, lib)))
    for site in site_dirs():
        for sub in ("nvidia/cu13", "nvidia/cublas"):
            candidates.append((os.path.join(site, sub, "include"), os.path.join(site, sub, "lib")))
    for inc, lib in candidates:
        if not os.path.exists(os.path.join(inc, "cublas_v2.h")):
            continue
        names = [n for n in ("libcublas.so", "libcublas.so.13") if os.path.exists(f"{lib}/{n}")]
        lt = [n for n in ("libcublasLt.so", "libcublasLt.so.13") if os.path.exists(f"{lib}/{n}")]
        if names and lt and os.path.exists(os.path.join(inc, "cublasLt.h")):
            return inc, lib, names[0], lt[0]
    return None


class BuildExt(build_ext):
    """Builds _C with setuptools, then the CUDA library with nvcc next to it."""

    def run(self):
        self.cuda = self.plan_cuda()
        for ext in self.extensions:
            if self.cuda:
                ext.define_macros.append(("SDCORE_WITH_CUDA", "1"))
            else:  # `sdcore info` says why, as a C string literal in build_info()
                ext.define_macros.append(("SDCORE_CUDA_NOT_BUILT", json.dumps(self.cuda_skipped)))
        super().run()
        if self.cuda:
            self.build_cuda_library()

    def plan_cuda(self):
        mode = cuda_mode()
        if mode == "0":
            self.cuda_skipped = "built with SDCORE_CUDA=0 (CPU only); rebuild with SDCORE_CUDA=1"
            log("CUDA disabled (SDCORE_CUDA=0): building the CPU backend only")
            return None
        nvcc = find_nvcc()
        cublas = find_cublas(nvcc) if nvcc else None
        if nvcc and cublas:
            log(f"CUDA backend: nvcc {nvcc}, cuBLAS in {cublas[1]}")
            return {"nvcc": nvcc, "cublas": cublas}
        why = "nvcc not found" if not nvcc else "cuBLAS (cublas_v2.h, libcublas.so) not found"
        if not nvcc:
            self.cuda_skipped = (
                "nvcc not found (CUDA_HOME, CUDA_PATH, PATH, /usr/local/cuda): install the CUDA "
                "toolkit, then reinstall sdcore"
            )
        else:
            self.cuda_skipped = (
                f"nvcc found ({nvcc}) but not cuBLAS (cublas_v2.h and libcublas.so, in the "
                "toolkit or the nvidia-cublas wheel): pip install nvidia-cublas, then reinstall "
                "sdcore"
            )
        if mode == "1":
            raise SystemExit(
                f"SDCORE_CUDA=1 but {why}; install the CUDA toolkit or "
                "`pip install nvidia-cublas` (and set CUDA_HOME to the toolkit)"
            )
        log(f"CUDA backend skipped: {why}; building the CPU backend only")
        return None

    def build_cuda_library(self):
        nvcc = self.cuda["nvcc"]
        inc, libdir, libname, ltname = self.cuda["cublas"]
        out_dir = os.path.dirname(self.get_ext_fullpath("sdcore._C"))
        obj_dir = os.path.join(self.build_temp, "cuda")
        os.makedirs(obj_dir, exist_ok=True)
        os.makedirs(out_dir, exist_ok=True)
        arch = os.environ.get(
            "SDCORE_CUDA_ARCH",
            "-gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90 "
            "-gencode=arch=compute_90,code=compute_90",
        ).split()
        flags = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden"]
        flags += ["-I", os.path.join(ROOT, "csrc"), "-I", os.path.join(ROOT, "kernels"), "-I", inc]
        # headers every kernel file may include: a change rebuilds them all
        headers = glob.glob(os.path.join(ROOT, "kernels", "*.cuh"))
        headers += [os.path.join(ROOT, "csrc", h) for h in CUDA_SHARED_HEADERS]
        objects, commands = [], []
        for src in sorted(glob.glob(os.path.join(ROOT, "kernels", "*.cu"))):
            obj = os.path.join(obj_dir, os.path.basename(src) + ".o")
            objects.append(obj)
            if self.force or newer(src, obj) or any(newer(h, obj) for h in headers):
                extra = CUDA_FILE_FLAGS.get(os.path.basename(src), [])
                commands.append([nvcc, *flags, *extra, *arch, "-c", src, "-o", obj])
        # one nvcc per file, as many at once as there are cores: the kernels files
        # instantiate many templates and each takes a while
        for cmd in commands:
            log(" ".join(cmd))
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            for _ in pool.map(subprocess.check_call, commands):
                pass
        target = os.path.join(out_dir, "libsdcore_cuda.so")
        # cuBLAS is found at run time beside a pip-installed nvidia-cublas, or where it
        # was at build time (a system toolkit); the CUDA runtime is linked statically.
        rpaths = ["$ORIGIN/../nvidia/cu13/lib", libdir, "/usr/local/cuda/lib64"]
        link = [nvcc, "-shared", *arch, "-o", target, *objects, f"-L{libdir}", f"-l:{libname}"]
        link += [f"-l:{ltname}"]
        link += ["-cudart", "static"]
        for r in rpaths:
            link += ["-Xlinker", f"-rpath={r}"]
        log(" ".join(link))
        subprocess.check_call(link)


def newer(src, dst):
    return not os.path.exists(dst) or os.path.getmtime(src) > os.path.getmtime(dst)


def check_libpng():
    """libpng's headers are needed to build; say how to get them instead of a compiler error."""
    dirs = ["/usr/include", "/usr/local/include", "/opt/homebrew/include"]
    dirs += os.environ.get("CPATH", "").split(":") + os.environ.get("C_INCLUDE_PATH", "").split(":")
    if not any(d and os.path.exists(os.path.join(d, "png.h")) for d in dirs):
        raise SystemExit(
            "sdcore needs libpng's headers to build: install them first "
            "(Debian/Ubuntu: apt-get install libpng-dev; Fedora: dnf install libpng-devel; "
            "macOS: brew install libpng)"
        )


def extension():
    check_libpng()
    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.c"), recursive=True))
    blas_lib = scipy_openblas32.get_lib_dir()
    return Extension(
        "sdcore._C",
        sources=sources,
        include_dirs=["csrc", numpy.get_include(), scipy_openblas32.get_include_dir()],
        library_dirs=[blas_lib],
        libraries=[scipy_openblas32.get_library(), "png", "m", "dl"],
        # OpenBLAS is found beside us in site-packages (the scipy-openblas32 wheel);
        # sdcore/__init__.py also preloads it, which covers in-place builds.
        runtime_library_dirs=["$ORIGIN/../scipy_openblas32/lib"],
        extra_compile_args=[
            "-std=c11",
            "-D_GNU_SOURCE",
            "-O3",
            "-fopenmp",
            "-Wall",
            "-Wextra",
            "-Werror=implicit-function-declaration",
            "-Wno-unused-parameter",
            "-fno-math-errno",
            "-fno-trapping-math",
        ],
        extra_link_args=["-fopenmp"],
    )


setup(ext_modules=[extension()], cmdclass={"build_ext": BuildExt})
