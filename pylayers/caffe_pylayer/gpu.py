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

import numpy as np

log = logging.getLogger("caffe_pylayer")
_cupy: ModuleType | None = None
_cupy_missing: str | None = None
# Views by (pointer, shape): a blob keeps its memory from one iteration to the
# next, so each layer call reuses the arrays instead of building new ones.
_views: dict[tuple[int, tuple[int, ...]], Any] = {}


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
    interface = memory.__cuda_array_interface__  # makes the GPU copy current
    pointer, shape = interface["data"][0], interface["shape"]
    if pointer and cupy.cuda.get_current_stream().ptr == 0:
        # CuPy on the legacy default stream, where Caffe's kernels run: stream
        # order already holds. cupy.asarray would synchronize the whole device
        # for the interface's stream at every view.
        key = (pointer, shape)
        array = _views.get(key)
        if array is None:
            if len(_views) > 1024:
                _views.clear()
            size = 4 * int(np.prod(shape, dtype=np.int64))
            # Caffe owns the memory; the view holds no reference to the blob.
            memory_pointer = cupy.cuda.MemoryPointer(cupy.cuda.UnownedMemory(pointer, size, None), 0)
            array = _views[key] = cupy.ndarray(shape, dtype=cupy.float32, memptr=memory_pointer)
        return array
    return cupy.asarray(memory)
