#!/usr/bin/env python3
"""Python EuclideanLossLayer vs Caffe's built-in EuclideanLoss: time ratios.

Builds identical nets that differ only in the loss layer (the built-in one,
ours, and as a reference Caffe's classic example layer), checks that they agree,
then times forward+backward per iteration (best of several repeats) on one
thread and prints one JSON line:

    {"mlp": {...}, "loss_dominated": {...}}

with times in milliseconds and the ratios ours/built-in and classic/built-in;
"loss_layer_*" entries time the loss layer alone.
Run by hand (`build/env/bin/python bench/bench_euclidean_loss.py`); never a test.
"""
from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one thread, before NumPy loads BLAS
os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np  # noqa: E402

import caffe  # noqa: E402
from caffe import layers as L  # noqa: E402
from nets import train_net  # noqa: E402

# The classic example layer, kept with the tests as a reference implementation.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "layers"))
LOSSES = {
    "builtin": None,
    "python": ("pyloss", "EuclideanLossLayer"),
    "classic": ("probe_layers", "ClassicEuclideanLossLayer"),
}


def make_net(kind: str, loss: str, batch: int, dim: int, outputs: int) -> caffe.Net:
    n = caffe.NetSpec()
    if kind == "mlp":
        n.x, n.label = L.Input(shape=[dict(dim=[batch, dim]), dict(dim=[batch, outputs])], ntop=2)
        n.h = L.InnerProduct(n.x, num_output=256, weight_filler=dict(type="xavier"))
        n.r = L.ReLU(n.h, in_place=True)
        n.pred = L.InnerProduct(n.r, num_output=outputs, weight_filler=dict(type="xavier"))
    else:  # the loss is nearly all the work: bottoms straight from the inputs
        n.pred, n.label = L.Input(shape=[dict(dim=[batch, dim]), dict(dim=[batch, dim])], ntop=2)
    if LOSSES[loss] is None:
        n.loss = L.EuclideanLoss(n.pred, n.label)
    else:
        module, layer = LOSSES[loss]
        # Caffe gives only built-in loss layers a default loss_weight of 1.
        n.loss = L.Python(n.pred, n.label, module=module, layer=layer, loss_weight=1)
    return train_net(n)


def fill(net: caffe.Net, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name in ("x", "pred", "label"):
        if name in net.blobs and name in net.inputs:
            net.blobs[name].data[...] = rng.standard_normal(net.blobs[name].data.shape)


def best_time_ms(step, iterations: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            step()
        best = min(best, (time.perf_counter() - start) / iterations)
    return best * 1e3


def compare(kind: str, batch: int, dim: int, outputs: int, iterations: int, repeats: int) -> dict:
    nets = {loss: make_net(kind, loss, batch, dim, outputs) for loss in LOSSES}
    builtin = nets["builtin"]
    for loss, net in nets.items():
        for name, params in builtin.params.items():  # identical weights
            for ours, theirs in zip(net.params[name], params):
                ours.data[...] = theirs.data
        fill(net)
        value = float(np.asarray(net.forward()["loss"]).reshape(-1)[0])
        net.backward()
        if not np.isclose(value, float(builtin.blobs["loss"].data), rtol=1e-5):
            sys.exit(f"{kind}: {loss} loss {value} differs from the built-in one")
        if not np.allclose(net.blobs["pred"].diff, builtin.blobs["pred"].diff, rtol=1e-5, atol=1e-7):
            sys.exit(f"{kind}: {loss} gradients differ from the built-in ones")

    def whole(net):
        return lambda: (net.forward(), net.backward())

    def loss_only(net):
        i = list(net._layer_names).index("loss")
        return lambda: (net._forward(i, i), net._backward(i, i))

    result = {"batch": batch, "dim": dim}
    for label, make_step in (("", whole), ("loss_layer_", loss_only)):
        times = {loss: best_time_ms(make_step(net), iterations, repeats) for loss, net in nets.items()}
        for loss, ms in times.items():
            result[f"{label}{loss}_ms"] = round(ms, 4)
        result[f"{label}ratio"] = round(times["python"] / times["builtin"], 3)
        result[f"{label}classic_ratio"] = round(times["classic"] / times["builtin"], 3)
    return result


def main() -> None:
    caffe.set_mode_cpu()
    report = {
        "threads": os.environ["OPENBLAS_NUM_THREADS"],
        "mlp": compare("mlp", batch=64, dim=256, outputs=10, iterations=200, repeats=7),
        "loss_dominated": compare("loss", batch=64, dim=4096, outputs=0, iterations=300,
                                  repeats=7),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
