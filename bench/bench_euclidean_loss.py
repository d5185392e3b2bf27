#!/usr/bin/env python3
"""Python EuclideanLossLayer vs Caffe's built-in EuclideanLoss: time and instruction ratios.

Builds identical nets that differ only in the loss layer (the built-in one,
ours, and as a reference Caffe's classic example layer from the source tree,
examples/pycaffe/layers/pyloss.py), checks that they agree, then times
forward+backward per iteration (best of several repeats) on one thread and
prints one JSON line:

    {"mlp": {...}, "loss_dominated": {...}, "instructions": {...}}

with times in milliseconds and the ratios ours/built-in and classic/built-in;
"loss_layer_*" entries time the loss layer alone. Wall-clock ratios move by a
few percent from run to run on a shared machine; "instructions" (with
--instructions, needs valgrind) counts what the CPU executes inside
Net::ForwardFromTo and Net::BackwardFromTo per MLP iteration, with callgrind,
which repeats exactly for the same build and inputs.

    build/env/bin/python bench/bench_euclidean_loss.py [--instructions]
        [--caffe-source build/src-cpu]

Run by hand; never a test.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one thread, before NumPy loads BLAS
os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np  # noqa: E402

import caffe  # noqa: E402
from caffe import layers as L  # noqa: E402
from nets import train_net  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSSES = {
    "builtin": None,
    "python": ("pyloss", "EuclideanLossLayer"),
    "classic": ("classic_pyloss", "EuclideanLossLayer"),  # see use_classic_layer
}
MLP = dict(batch=64, dim=256, outputs=64)
COUNTED = ("caffe::Net<float>::ForwardFromTo*", "caffe::Net<float>::BackwardFromTo*")


def use_classic_layer(caffe_source: str) -> None:
    """Caffe's example pyloss.py, importable as classic_pyloss (ours is pyloss)."""
    example = os.path.join(caffe_source, "examples", "pycaffe", "layers", "pyloss.py")
    if not os.path.isfile(example):
        sys.exit(f"no {example}: give the unpacked Caffe source with --caffe-source")
    folder = tempfile.mkdtemp(prefix="classic-layer-")
    shutil.copyfile(example, os.path.join(folder, "classic_pyloss.py"))
    sys.path.insert(0, folder)


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


def run_iterations(loss: str, iterations: int) -> None:
    """What callgrind watches: the MLP's forward+backward, a given number of times."""
    net = make_net("mlp", loss, **MLP)
    fill(net)
    for _ in range(iterations):
        net.forward()
        net.backward()


def instructions(loss: str, caffe_source: str, iterations: int) -> int:
    """Instructions executed inside the counted functions, per callgrind."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "callgrind.out")
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--collect-atstart=no",
             *(f"--toggle-collect={name}" for name in COUNTED),
             sys.executable, os.path.abspath(__file__), "--caffe-source", caffe_source,
             "--run", loss, str(iterations)], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"callgrind failed for {loss}: {done.stderr[-1500:]}")
        with open(out) as f:
            return int(re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M).group(1))


def count_instructions(caffe_source: str) -> dict:
    # Two runs of different lengths: their difference is the steady state, free
    # of the first iteration's one-time work (imports, allocations).
    short, long = 5, 45
    per_iteration = {loss: (instructions(loss, caffe_source, long)
                            - instructions(loss, caffe_source, short)) / (long - short)
                     for loss in LOSSES}
    return {"net": "mlp {batch}x{dim} -> 256 -> {outputs}".format(**MLP),
            **{f"{loss}_per_iteration": round(n) for loss, n in per_iteration.items()},
            "ratio": round(per_iteration["python"] / per_iteration["builtin"], 4),
            "classic_ratio": round(per_iteration["classic"] / per_iteration["builtin"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caffe-source", default=os.path.join(REPO, "build", "src-cpu"),
                        help="unpacked Caffe source (for the classic example layer)")
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions per MLP iteration with callgrind")
    parser.add_argument("--run", nargs=2, metavar=("LOSS", "ITERATIONS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    use_classic_layer(args.caffe_source)
    caffe.set_mode_cpu()
    if args.run:
        run_iterations(args.run[0], int(args.run[1]))
        return
    report = {
        "threads": os.environ["OPENBLAS_NUM_THREADS"],
        "mlp": compare("mlp", **MLP, iterations=200, repeats=7),
        "loss_dominated": compare("loss", batch=64, dim=4096, outputs=0, iterations=300,
                                  repeats=7),
    }
    if args.instructions:
        report["instructions"] = count_instructions(args.caffe_source)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
