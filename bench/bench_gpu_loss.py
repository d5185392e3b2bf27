#!/usr/bin/env python3
"""GPU mode: Python EuclideanLossLayer on the GPU path and the CPU path vs the built-in.

Builds nets that differ only in the loss layer: Caffe's built-in EuclideanLoss,
caffe_pylayer's layer on its GPU path (forward_gpu/backward_gpu with CuPy, on
Caffe's GPU memory), and the same layer on the CPU path (what every Python
layer did before: its bottoms copied to the host and the gradients back). It
checks that the three agree, times forward+backward per iteration (median of
several repeats, each ending in a device synchronisation), and prints one JSON
line with times in milliseconds and the ratios gpu_path/builtin and
cpu_path/builtin for each net:

    mlp    256x4096 inputs, two 4096-wide inner products, loss on 256x4096
    conv   64x3x64x64 inputs, two 3x3 convolutions of 64 channels, loss on 64x64x64x64

Run by hand on a CUDA build with a GPU and CuPy; never a test.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np  # noqa: E402

import caffe  # noqa: E402
from caffe import layers as L  # noqa: E402
from nets import train_net  # noqa: E402
import cupy  # noqa: E402
from caffe_pylayer.losses import EuclideanLossLayer  # noqa: E402


class CpuPathEuclideanLossLayer(EuclideanLossLayer):
    """The same layer, made to take the CPU path in GPU mode."""

    forward_gpu = EuclideanLossLayer.forward
    backward_gpu = EuclideanLossLayer.backward


LOSSES = {
    "builtin": None,
    "gpu_path": ("caffe_pylayer", "EuclideanLossLayer"),
    "cpu_path": ("bench_gpu_loss", "CpuPathEuclideanLossLayer"),
}


def make_net(kind: str, loss: str) -> caffe.Net:
    n = caffe.NetSpec()
    if kind == "mlp":
        n.x, n.label = L.Input(shape=[dict(dim=[256, 4096]), dict(dim=[256, 4096])], ntop=2)
        n.h = L.InnerProduct(n.x, num_output=4096, weight_filler=dict(type="xavier"))
        n.r = L.ReLU(n.h, in_place=True)
        n.pred = L.InnerProduct(n.r, num_output=4096, weight_filler=dict(type="xavier"))
    else:
        n.x, n.label = L.Input(shape=[dict(dim=[64, 3, 64, 64]), dict(dim=[64, 64, 64, 64])], ntop=2)
        n.c1 = L.Convolution(n.x, num_output=64, kernel_size=3, pad=1, weight_filler=dict(type="xavier"))
        n.r = L.ReLU(n.c1, in_place=True)
        n.pred = L.Convolution(n.r, num_output=64, kernel_size=3, pad=1, weight_filler=dict(type="xavier"))
    if LOSSES[loss] is None:
        n.loss = L.EuclideanLoss(n.pred, n.label)
    else:
        module, layer = LOSSES[loss]
        n.loss = L.Python(n.pred, n.label, module=module, layer=layer, loss_weight=1)
    caffe.set_random_seed(1)
    return train_net(n)


def fill(net: caffe.Net) -> None:
    rng = np.random.default_rng(0)
    for name in ("x", "label"):
        net.blobs[name].data[...] = rng.standard_normal(net.blobs[name].shape).astype(np.float32)


def iteration(net: caffe.Net) -> float:
    last = len(net.layers) - 1
    loss = net._forward(0, last)  # reads the loss on the host: one sync per iteration
    net._backward(last, 0)
    return loss


def time_net(net: caffe.Net, iterations: int = 20, repeats: int = 7) -> float:
    for _ in range(5):
        iteration(net)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            iteration(net)
        cupy.cuda.runtime.deviceSynchronize()  # the last backward's kernels too
        times.append((time.perf_counter() - start) / iterations * 1e3)
    return statistics.median(times)


def main() -> int:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    caffe.set_device(0)
    caffe.set_mode_gpu()
    result = {"gpu": caffe_gpu_name()}
    for kind in ("mlp", "conv"):
        nets = {loss: make_net(kind, loss) for loss in LOSSES}
        for net in nets.values():
            fill(net)
        losses = {loss: iteration(net) for loss, net in nets.items()}
        grads = {loss: net.blobs["pred"].diff.copy() for loss, net in nets.items()}
        for loss in ("gpu_path", "cpu_path"):
            assert abs(losses[loss] - losses["builtin"]) <= 1e-4 * abs(losses["builtin"]), losses
            np.testing.assert_allclose(grads[loss], grads["builtin"], rtol=1e-3, atol=1e-6)
        ms = {loss: time_net(net) for loss, net in nets.items()}
        result[kind] = {**{f"{k}_ms": round(v, 3) for k, v in ms.items()},
                        "gpu_path_ratio": round(ms["gpu_path"] / ms["builtin"], 3),
                        "cpu_path_ratio": round(ms["cpu_path"] / ms["builtin"], 3)}
    print(json.dumps(result))
    return 0


def caffe_gpu_name() -> str:
    return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()


if __name__ == "__main__":
    sys.exit(main())
