"""GPU arrays over Caffe's own GPU memory, for layers' forward_gpu/backward_gpu.

In GPU mode this package's Caffe calls a Python layer's ``forward_gpu`` and
``backward_gpu`` when it defines them. There, ``blob.gpu_data`` and
``blob.gpu_diff`` expose the blob's GPU memory through
``__cuda_array_interface__``, and :func:`view` turns them into CuPy arrays that
read and write that memory in place: the bottoms never travel to the host.

CuPy is optional. :func:`cupy_or_none` returns ``None`` when it cannot be
imported, and logs once why; layers then run their CPU methods instead.
"""
from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

log = logging.getLogger("caffe_pylayer")
_cupy: ModuleType | None = None
_cupy_missing: str | None = None


def cupy_or_none(layer: str = "a Python layer") -> ModuleType | None:
    """The cupy module, or None (logged once per process) when it cannot be imported."""
    global _cupy, _cupy_missing
    if _cupy is not None:
        return _cupy
    if _cupy_missing is None:
        try:
            import cupy
        except ImportError as error:  # also raised for a CuPy that cannot load its CUDA libraries
            _cupy_missing = str(error)
            log.warning("caffe_pylayer: CuPy is unavailable (%s): %s and other GPU-capable "
                        "Python layers run on the CPU in GPU mode, copying their blobs to the "
                        "host; install CuPy for your CUDA version (conda: cupy; pip: "
                        "cupy-cuda13x or cupy-cuda12x)", _cupy_missing, layer)
            return None
        _cupy = cupy
        return cupy
    return None


def view(memory: Any) -> Any:
    """A CuPy array over ``blob.gpu_data`` or ``blob.gpu_diff``, without a copy."""
    cupy = cupy_or_none()
    if cupy is None:
        raise RuntimeError(f"CuPy is unavailable ({_cupy_missing})")
    return cupy.asarray(memory)
