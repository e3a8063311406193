"""Seeded Gaussian noise identical to PyTorch's CPU generator, without PyTorch.

Stable Diffusion front ends draw their initial latents with::

    torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))

and ancestral samplers keep drawing noise from that generator step after step.
``Generator(seed).randn(shape)`` returns the same float32 values bit for bit, and
consecutive calls continue the stream exactly as consecutive ``torch.randn`` calls do,
small and large draws mixed in any order.

How torch draws them (torch 2.x, CPU):

* ``manual_seed(s)`` seeds a standard mt19937 with the low 32 bits of ``s`` (so seeds
  that differ by a multiple of 2**32 give the same noise) and drops the cached normal.
* Tensors of fewer than 16 elements: each element is a double-precision Box-Muller draw
  from two 53-bit uniforms (four 32-bit outputs); the second value of each pair is
  cached in the generator and used by the next small draw, even one made after large
  draws in between.
* Tensors of 16 or more elements: one 24-bit float uniform per element (one 32-bit
  output each); then each block of 16 becomes 16 normals, element ``j`` paired with
  ``j + 8``. When the size is not a multiple of 16, 16 fresh uniforms replace the last
  16 elements and are transformed again, so such a draw takes ``n + 16`` outputs.
* The float32 transform of large draws depends on the CPU torch runs on: on x86 CPUs
  with AVX2 and FMA (AVX-512 ones included, which torch sends to the same kernel) it
  uses a vectorised float log/sincos (``kernel="avx2"``); on other CPUs or with
  ``ATEN_CPU_CAPABILITY=default`` it uses the C library's ``logf``/``cosf``/``sinf``
  (``kernel="scalar"``). The two differ in the last bit of about 1% of the values.
  ``kernel="auto"`` (the default) makes the choice torch would make on this machine;
  name a kernel to reproduce noise made on another machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sdcore import _C

Shape = int | Sequence[int]

__all__ = ["Generator", "randn"]


class Generator:
    """The state of ``torch.Generator("cpu").manual_seed(seed)``.

    Args:
        seed: an int in [-2**63, 2**64); a negative seed is taken modulo 2**64, as torch
            does. bool and float are refused (TypeError), out-of-range ints too
            (ValueError).
        kernel: ``"auto"``, ``"avx2"`` or ``"scalar"``: which of torch's float32 kernels
            to reproduce (see the module docstring).

    One Generator may be shared between threads (draws are serialised by a lock and
    run without the GIL); separate Generators run fully in parallel.
    """

    __slots__ = ("_gen",)

    def __init__(self, seed: int, *, kernel: str = "auto") -> None:
        self._gen = _C.Generator(seed, kernel=kernel)

    def manual_seed(self, seed: int) -> Generator:
        """Restart the stream from ``seed`` (as ``torch.Generator.manual_seed``); returns self."""
        self._gen.manual_seed(seed)
        return self

    def initial_seed(self) -> int:
        """The last seed given, in [0, 2**64) (as ``torch.Generator.initial_seed``)."""
        return self._gen.initial_seed()

    @property
    def kernel(self) -> str:
        """The float32 kernel reproduced: ``"avx2"`` or ``"scalar"``."""
        return self._gen.kernel

    def randn(self, shape: Shape, dtype: np.dtype | type | str | None = None) -> np.ndarray:
        """The next ``torch.randn(shape, generator=g, dtype=dtype)`` of this stream.

        Args:
            shape: an int or a sequence of ints >= 0, any number of dims up to NumPy's
                limit; ``()`` gives a 0-d array, a 0 dim an empty array (drawing nothing).
            dtype: float32 (default) or float64.

        Returns:
            A new C-contiguous array of that shape and dtype.
        """
        return self._gen.randn(shape, dtype)

    def __repr__(self) -> str:
        return f"Generator(initial_seed={self.initial_seed()}, kernel={self.kernel!r})"


def randn(
    shape: Shape,
    seed: int,
    dtype: np.dtype | type | str | None = None,
    *,
    kernel: str = "auto",
) -> np.ndarray:
    """``torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`` in one call.

    The same as ``Generator(seed, kernel=kernel).randn(shape, dtype)``.
    """
    return _C.randn(shape, seed, dtype, kernel=kernel)
