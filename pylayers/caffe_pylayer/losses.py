"""Loss layers that compute exactly what Caffe's built-in ones compute."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from caffe_pylayer.base import PythonLayer


class EuclideanLossLayer(PythonLayer):
    """``sum((a - b)**2) / N / 2``, as Caffe's built-in ``EuclideanLoss``.

    Bottoms: predictions ``a`` and targets ``b``, any shapes with the same first
    axis ``N`` and the same number of values. Top: a scalar (0-axis blob), like
    Caffe's built-in losses. Gradients are ``±(a - b) / N`` times the top diff,
    which is where a ``loss_weight`` arrives; ``propagate_down`` is honoured.
    """

    num_bottoms = 2
    num_tops = 1
    param_defaults: dict[str, Any] = {}

    def setup(self, bottom: Sequence[Any], top: Sequence[Any]) -> None:
        super().setup(bottom, top)
        self.diff = np.empty(0, dtype=np.float32)
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
        if self.diff.size != a.count:  # reuse the buffer while the size holds
            self.diff = np.empty(a.count, dtype=np.float32)
        top[0].reshape()  # no axes: a scalar, as built-in losses

    def forward(self, bottom: Sequence[Any], top: Sequence[Any]) -> None:
        diff = self.diff
        np.subtract(bottom[0].data.reshape(-1), bottom[1].data.reshape(-1), out=diff)
        # np.dot of two float32 vectors is BLAS sdot, as Caffe's caffe_cpu_dot.
        top[0].data[...] = np.dot(diff, diff) * self.inv_num * np.float32(0.5)

    def backward(self, top: Sequence[Any], propagate_down: Sequence[bool],
                 bottom: Sequence[Any]) -> None:
        # One pass per bottom: the diff kept from forward times ±top_diff / N.
        scale = top[0].diff * self.inv_num
        if propagate_down[0]:
            np.multiply(self.diff, scale, out=bottom[0].diff.reshape(-1))
        if propagate_down[1]:
            np.multiply(self.diff, -scale, out=bottom[1].diff.reshape(-1))
