"""Finite-difference gradient checks of Python layers inside a net.

The Python counterpart of Caffe's C++ ``GradientChecker``: the objective is
``sum(w * top)`` over the layer's tops with fixed random weights ``w``; the
layer's ``backward`` (given ``w`` as top diff) must match central differences
of that objective for every checked bottom value, within
``threshold * max(|analytic|, |numeric|, 1)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class GradientCheckError(AssertionError):
    """A layer's backward disagrees with finite differences."""


@dataclass
class GradientReport:
    """What a passing check measured."""

    layer: str
    checked: int               # number of bottom and parameter values perturbed
    max_abs_error: float       # largest |analytic - numeric|
    max_scaled_error: float    # largest error / max(|analytic|, |numeric|, 1)
    params_checked: int = 0    # of ``checked``, how many were parameter values


def _objective(tops, weights) -> float:
    return float(sum(np.dot(t.data.reshape(-1).astype(np.float64), w) for t, w in zip(tops, weights)))


def check_gradients(net, layer_name: str, *, step: float = 1e-2, threshold: float = 1e-2,
                    max_checks: int | None = None, seed: int = 1701,
                    gpu: bool = False) -> GradientReport:
    """Check ``backward`` of the Python layer ``layer_name`` of ``net``.

    Runs the whole net forward once, then only that layer. Every bottom is
    checked with ``propagate_down`` true, and so is every parameter blob of the
    layer (``layer.blobs``, whose diffs ``backward`` accumulates into, as in
    Caffe's own layers). ``max_checks`` limits how many values of each blob are
    perturbed (chosen at random); ``None`` checks all. With ``gpu=True`` the
    layer's ``backward_gpu`` is checked instead (call ``caffe.set_mode_gpu()``
    first; the forward passes then run the layer's GPU path too).
    Raises :class:`GradientCheckError` naming the layer, blob and value that
    fail; returns a :class:`GradientReport` otherwise.
    """
    names = list(net._layer_names)
    if layer_name not in names:
        raise KeyError(f"no layer {layer_name!r} in the net; layers: {names}")
    index = names.index(layer_name)
    layer = net.layers[index]
    backward_name = "backward_gpu" if gpu else "backward"
    if not hasattr(layer, "backward"):
        raise TypeError(f"layer {layer_name!r} is a {layer.type} layer, not a Python layer")
    if not hasattr(layer, backward_name):
        raise TypeError(f"layer {layer_name!r} ({type(layer).__name__}) has no {backward_name}")
    backward = getattr(layer, backward_name)
    bottom_names = list(net.bottom_names[layer_name])
    bottoms = [net.blobs[n] for n in bottom_names]
    tops = [net.blobs[n] for n in net.top_names[layer_name]]
    params = list(layer.blobs)
    targets = [(f"bottom {i} ({n})", b) for i, (n, b) in enumerate(zip(bottom_names, bottoms))]
    targets += [(f"parameter blob {i}", p) for i, p in enumerate(params)]
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(t.count) for t in tops]

    net.forward()
    for top, w in zip(tops, weights):
        top.diff[...] = w.reshape(top.diff.shape).astype(np.float32)
    for _, blob in targets:
        blob.diff[...] = 0
    backward(tops, [True] * len(bottoms), bottoms)
    analytic = [blob.diff.reshape(-1).astype(np.float64) for _, blob in targets]

    checked, params_checked, max_abs, max_scaled = 0, 0, 0.0, 0.0
    for ti, (label, blob) in enumerate(targets):
        flat = blob.data.reshape(-1)
        positions = np.arange(flat.size)
        if max_checks is not None and flat.size > max_checks:
            positions = rng.choice(flat.size, size=max_checks, replace=False)
        for j in positions:
            original = flat[j]
            flat[j] = original + step
            net._forward(index, index)
            plus = _objective(tops, weights)
            flat[j] = original - step
            net._forward(index, index)
            minus = _objective(tops, weights)
            flat[j] = original
            numeric = (plus - minus) / (2 * step)
            error = abs(analytic[ti][j] - numeric)
            scale = max(abs(analytic[ti][j]), abs(numeric), 1.0)
            if error > threshold * scale:
                raise GradientCheckError(
                    f"layer {layer_name!r}, {label}, value {j}: {backward_name} gives "
                    f"{analytic[ti][j]:.6g}, finite differences give {numeric:.6g} "
                    f"(error {error:.3g} > {threshold} x {scale:.3g})")
            checked += 1
            params_checked += ti >= len(bottoms)
            max_abs = max(max_abs, error)
            max_scaled = max(max_scaled, error / scale)
    net._forward(index, index)  # leave the tops as the unperturbed bottoms give them
    return GradientReport(layer_name, checked, max_abs, max_scaled, params_checked)
