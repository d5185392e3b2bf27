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
    checked: int               # number of bottom values perturbed
    max_abs_error: float       # largest |analytic - numeric|
    max_scaled_error: float    # largest error / max(|analytic|, |numeric|, 1)


def _objective(tops, weights) -> float:
    return float(sum(np.dot(t.data.reshape(-1).astype(np.float64), w) for t, w in zip(tops, weights)))


def check_gradients(net, layer_name: str, *, step: float = 1e-2, threshold: float = 1e-2,
                    max_checks: int | None = None, seed: int = 1701) -> GradientReport:
    """Check ``backward`` of the Python layer ``layer_name`` of ``net``.

    Runs the whole net forward once, then only that layer. Every bottom is
    checked with ``propagate_down`` true. ``max_checks`` limits how many values
    of each bottom are perturbed (chosen at random); ``None`` checks all.
    Raises :class:`GradientCheckError` naming the layer, bottom and value that
    fail; returns a :class:`GradientReport` otherwise.
    """
    names = list(net._layer_names)
    if layer_name not in names:
        raise KeyError(f"no layer {layer_name!r} in the net; layers: {names}")
    index = names.index(layer_name)
    layer = net.layers[index]
    if not hasattr(layer, "backward"):
        raise TypeError(f"layer {layer_name!r} is a {layer.type} layer, not a Python layer")
    bottoms = [net.blobs[n] for n in net.bottom_names[layer_name]]
    tops = [net.blobs[n] for n in net.top_names[layer_name]]
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(t.count) for t in tops]

    net.forward()
    for top, w in zip(tops, weights):
        top.diff[...] = w.reshape(top.diff.shape).astype(np.float32)
    for b in bottoms:
        b.diff[...] = 0
    layer.backward(tops, [True] * len(bottoms), bottoms)
    analytic = [b.diff.reshape(-1).astype(np.float64) for b in bottoms]

    checked, max_abs, max_scaled = 0, 0.0, 0.0
    for bi, blob in enumerate(bottoms):
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
            error = abs(analytic[bi][j] - numeric)
            scale = max(abs(analytic[bi][j]), abs(numeric), 1.0)
            if error > threshold * scale:
                raise GradientCheckError(
                    f"layer {layer_name!r}, bottom {bi} ({net.bottom_names[layer_name][bi]}), "
                    f"value {j}: backward gives {analytic[bi][j]:.6g}, finite differences "
                    f"give {numeric:.6g} (error {error:.3g} > {threshold} x {scale:.3g})")
            checked += 1
            max_abs = max(max_abs, error)
            max_scaled = max(max_scaled, error / scale)
    net._forward(index, index)  # leave the tops as the unperturbed bottoms give them
    return GradientReport(layer_name, checked, max_abs, max_scaled)
