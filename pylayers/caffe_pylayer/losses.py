"""Loss layers that compute exactly what Caffe's built-in ones compute."""
from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

from caffe_pylayer import gpu
from caffe_pylayer.base import PythonLayer


class EuclideanLossLayer(PythonLayer):
    """``sum((a - b)**2) / N / 2``, as Caffe's built-in ``EuclideanLoss``.

    Bottoms: predictions ``a`` and targets ``b``, any shapes with the same first
    axis ``N`` and the same number of values. Top: a scalar (0-axis blob), like
    Caffe's built-in losses. Gradients are ``±(a - b) / N`` times the top diff,
    which is where a ``loss_weight`` arrives; ``propagate_down`` is honoured.

    In GPU mode it computes on the GPU with CuPy, in Caffe's own GPU memory
    (``forward_gpu``/``backward_gpu``); without CuPy, on the CPU as in CPU mode.
    """

    num_bottoms = 2
    num_tops = 1
    param_defaults: dict[str, Any] = {}
    # Its reshape depends on the bottoms' shapes alone: this package's Caffe
    # then calls it only when they change, not before every forward pass.
    reshape_when_shapes_change = True

    def setup(self, bottom: Sequence[Any], top: Sequence[Any]) -> None:
        super().setup(bottom, top)
        self.diff = np.empty(0, dtype=np.float32)  # a - b, kept for backward
        self.diff_gpu: Any = None  # a CuPy buffer, made by the first forward_gpu
        self.num = 1
        self.inv_num = np.float32(1)

    def reshape(self, bottom: Sequence[Any], top: Sequence[Any]) -> None:
        a, b = bottom[0], bottom[1]
        if a.count != b.count:
            raise self.config_error(
                f"bottoms must hold the same number of values, got {a.count} "
                f"{tuple(a.shape)} and {b.count} {tuple(b.shape)}")
        if a.num != b.num:
            raise self.config_error(
                f"bottoms must have the same first axis, got {tuple(a.shape)} "
                f"and {tuple(b.shape)}")
        if a.num == 0:
            raise self.config_error(f"bottoms are empty: {tuple(a.shape)}")
        self.num = a.num
        self.inv_num = np.float32(1.0 / a.num)  # multiply, not divide, per call
        self.half_inv_num = np.float32(0.5 / a.num)
        # a - b in a's shape, with views of it flat and in b's shape made once
        # here rather than at every call.
        a_shape, b_shape = tuple(a.shape), tuple(b.shape)
        if self.diff.shape != a_shape:
            self.diff = np.empty(a_shape, dtype=np.float32)
        self.diff_flat = self.diff.reshape(-1)
        self.diff_as_b = self.diff.reshape(b_shape)
        self.b_shape = None if b_shape == a_shape else a_shape  # reshape b to a's shape?
        top[0].reshape()  # no axes: a scalar, as built-in losses

    def forward(self, bottom: Sequence[Any], top: Sequence[Any]) -> None:
        b = bottom[1].data
        if self.b_shape is not None:
            b = b.reshape(self.b_shape)
        np.subtract(bottom[0].data, b, out=self.diff)
        # np.dot of two float32 vectors is BLAS sdot, as Caffe's caffe_cpu_dot.
        flat = self.diff_flat
        top[0].data[...] = np.dot(flat, flat) * self.half_inv_num

    def backward(self, top: Sequence[Any], propagate_down: Sequence[bool],
                 bottom: Sequence[Any]) -> None:
        # One pass per bottom: the diff kept from forward times ±top_diff / N.
        scale = top[0].diff * self.inv_num
        if propagate_down[0]:
            np.multiply(self.diff, scale, out=bottom[0].diff)
        if propagate_down[1]:
            np.multiply(self.diff_as_b, -scale, out=bottom[1].diff)

    def forward_gpu(self, bottom: Sequence[Any], top: Sequence[Any]) -> None:
        cupy = gpu.cupy_or_none(self.describe())
        if cupy is None:
            self.forward(bottom, top)
            return
        if self.diff_gpu is None or self.diff_gpu.size != bottom[0].count:
            self.diff_gpu = cupy.empty(bottom[0].count, dtype=cupy.float32)
        diff = self.diff_gpu
        cupy.subtract(gpu.view(bottom[0].gpu_data).reshape(-1),
                      gpu.view(bottom[1].gpu_data).reshape(-1), out=diff)
        # cuBLAS sdot, as Caffe's caffe_gpu_dot; the loss stays on the device.
        cupy.multiply(cupy.dot(diff, diff), self.inv_num * np.float32(0.5),
                      out=gpu.view(top[0].gpu_data))

    def backward_gpu(self, top: Sequence[Any], propagate_down: Sequence[bool],
                     bottom: Sequence[Any]) -> None:
        cupy = gpu.cupy_or_none(self.describe())
        if cupy is None or self.diff_gpu is None:
            self.backward(top, propagate_down, bottom)
            return
        # One pass over the kept diff writes both gradients, ±diff * top_diff / N.
        top_diff = gpu.view(top[0].gpu_diff)
        if propagate_down[0] and propagate_down[1]:
            _scaled_pair()(self.diff_gpu, top_diff, self.inv_num,
                           gpu.view(bottom[0].gpu_diff).reshape(-1),
                           gpu.view(bottom[1].gpu_diff).reshape(-1))
        elif propagate_down[0] or propagate_down[1]:
            sign = self.inv_num if propagate_down[0] else -self.inv_num
            target = bottom[0] if propagate_down[0] else bottom[1]
            _scaled()(self.diff_gpu, top_diff, sign, gpu.view(target.gpu_diff).reshape(-1))


@functools.cache
def _scaled() -> Any:
    """out = diff * top_diff * k, with the top diff read on the device."""
    cupy = gpu.cupy_or_none()
    return cupy.ElementwiseKernel("T d, raw T g, T k", "T out", "out = d * (g[0] * k)",
                                  "caffe_pylayer_scaled")


@functools.cache
def _scaled_pair() -> Any:
    """out0 = diff * top_diff * k, out1 = -out0: both gradients in one pass."""
    cupy = gpu.cupy_or_none()
    return cupy.ElementwiseKernel("T d, raw T g, T k", "T out0, T out1",
                                  "T v = d * (g[0] * k); out0 = v; out1 = -v",
                                  "caffe_pylayer_scaled_pair")
