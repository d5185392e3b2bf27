#!/usr/bin/env python3
"""Caffe's CPU engines, and OpenCV's DNN module, on the same two nets.

One run measures, in milliseconds per iteration (the median of --iters):

- conv4: 16x3x64x64 input, four 3x3 convolutions (32, 64, 128, 256 channels),
  each followed by ReLU and 2x2 max pooling, an inner product, softmax loss;
- lenet: Caffe's LeNet, batch 64;

and for each net:

- train_ms: forward + backward with the oneDNN engine (the default in CPU
  mode) and with Caffe's own code (CAFFE_ENGINE=caffe), on one thread; their
  ratio (goals: conv4 <= 0.55, lenet <= 0.65);
- forward_ms: the deploy net (Input to the last inner product) forward only,
  with the oneDNN engine and with OpenCV DNN 4.x reading the same weights
  from a saved .caffemodel, outputs compared (goal: ratio <= 0.8);
- two_threads: conv4's train_ms on one thread over two (goal >= 1.7).

The last line printed is one JSON object with all of these.

    build/env/bin/python bench/bench_cpu_engine.py [--iters 20]

OpenCV is a benchmark-only dependency: pip install 'opencv-python-headless<5'
(OpenCV 5 has no Caffe importer); without it, the OpenCV columns are null.
Run by hand; never a test. Each measurement runs in a child process, so the
thread counts (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS) are set before the
libraries load.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

GOALS = {"conv4_train_ratio": 0.55, "lenet_train_ratio": 0.65,
         "forward_ratio_to_opencv": 0.8, "conv4_two_threads": 1.7}


def net_spec(name: str, deploy: bool):
    """The net as a NetSpec: training (data from a DummyData layer, softmax
    loss) or deploy (an Input layer, ending at the last inner product)."""
    import caffe
    from caffe import layers as L, params as P

    shape = {"conv4": [16, 3, 64, 64], "lenet": [64, 1, 28, 28]}[name]
    n = caffe.NetSpec()
    if deploy:
        n.data = L.Input(shape=dict(dim=shape))
    else:
        n.data, n.label = L.DummyData(
            shape=[dict(dim=shape), dict(dim=[shape[0]])],
            data_filler=[dict(type="gaussian", std=1.0), dict(type="constant", value=1)],
            ntop=2)
    weights = dict(weight_filler=dict(type="xavier"), bias_filler=dict(type="constant", value=0.1))
    top = n.data
    if name == "conv4":
        for i, width in enumerate([32, 64, 128, 256], 1):
            conv = L.Convolution(top, num_output=width, kernel_size=3, pad=1, **weights)
            setattr(n, f"conv{i}", conv)
            setattr(n, f"relu{i}", L.ReLU(conv, in_place=True))
            top = L.Pooling(conv, pool=P.Pooling.MAX, kernel_size=2, stride=2)
            setattr(n, f"pool{i}", top)
        n.ip = L.InnerProduct(top, num_output=10, **weights)
        last = n.ip
    else:
        n.conv1 = L.Convolution(top, num_output=20, kernel_size=5, **weights)
        n.pool1 = L.Pooling(n.conv1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
        n.conv2 = L.Convolution(n.pool1, num_output=50, kernel_size=5, **weights)
        n.pool2 = L.Pooling(n.conv2, pool=P.Pooling.MAX, kernel_size=2, stride=2)
        n.ip1 = L.InnerProduct(n.pool2, num_output=500, **weights)
        n.relu1 = L.ReLU(n.ip1, in_place=True)
        n.ip2 = L.InnerProduct(n.ip1, num_output=10, **weights)
        last = n.ip2
    if not deploy:
        n.loss = L.SoftmaxWithLoss(last, n.label)
    return n


def load_net(name: str, deploy: bool, weights: str | None = None):
    import caffe

    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(str(net_spec(name, deploy).to_proto()))
    try:
        if weights:
            return caffe.Net(f.name, caffe.TEST, weights=weights), f.name
        return caffe.Net(f.name, caffe.TEST if deploy else caffe.TRAIN), f.name
    except BaseException:
        os.unlink(f.name)
        raise


def median_ms(step, iters: int) -> float:
    step()  # the first call makes oneDNN's primitives and touches memory
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        step()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def measure(kind: str, name: str, iters: int, folder: str) -> dict:
    """One measurement, in this (child) process."""
    import numpy as np

    if kind == "train":
        net, proto = load_net(name, deploy=False)
        os.unlink(proto)
        return {"ms": median_ms(lambda: (net.forward(), net.backward()), iters)}

    # forward: Caffe's deploy net and OpenCV's, on the same weights and input
    weights = os.path.join(folder, f"{name}.caffemodel")
    if not os.path.exists(weights):
        net, proto = load_net(name, deploy=True)
        os.unlink(proto)
        net.save(weights)
    net, proto = load_net(name, deploy=True, weights=weights)
    data = np.random.default_rng(0).standard_normal(net.blobs["data"].data.shape).astype(np.float32)
    net.blobs["data"].data[...] = data
    caffe_ms = median_ms(net.forward, iters)
    output = next(reversed(net.outputs))
    expected = net.forward()[output].copy()
    result = {"ms": caffe_ms, "opencv_ms": None, "opencv_max_rel_diff": None, "opencv": None}
    try:
        import cv2
    except ImportError:
        os.unlink(proto)
        return result
    cv2.setNumThreads(int(os.environ["OMP_NUM_THREADS"]))
    cv_net = cv2.dnn.readNetFromCaffe(proto, weights)
    os.unlink(proto)
    cv_net.setInput(data)
    result["opencv_ms"] = median_ms(cv_net.forward, iters)
    got = cv_net.forward().reshape(expected.shape)
    result["opencv_max_rel_diff"] = float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))
    result["opencv"] = cv2.__version__
    return result


def child(kind: str, name: str, engine: str, threads: int, iters: int, folder: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               GLOG_minloglevel="2", CAFFE_ENGINE=engine)
    out = subprocess.run([sys.executable, __file__, "--child", kind, name, str(iters), folder],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, name, iters, folder = args.child
        print(json.dumps(measure(kind, name, int(iters), folder)))
        return

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in ("conv4", "lenet"):
            onednn = child("train", name, "default", 1, args.iters, folder)["ms"]
            caffe_own = child("train", name, "caffe", 1, args.iters, folder)["ms"]
            forward = child("forward", name, "default", 1, args.iters, folder)
            caffe_forward = child("forward", name, "caffe", 1, args.iters, folder)["ms"]
            r = {"train_ms": {"onednn": onednn, "caffe": caffe_own},
                 "train_ratio": onednn / caffe_own,
                 "forward_ms": {"onednn": forward["ms"], "caffe": caffe_forward,
                                "opencv": forward["opencv_ms"]},
                 "forward_ratio_to_opencv": (forward["ms"] / forward["opencv_ms"]
                                             if forward["opencv_ms"] else None),
                 "opencv_max_rel_diff": forward["opencv_max_rel_diff"],
                 "opencv": forward["opencv"]}
            if name == "conv4":
                two = child("train", name, "default", 2, args.iters, folder)["ms"]
                r["train_ms"]["onednn_2_threads"] = two
                r["two_threads"] = onednn / two
            results[name] = r
            print(f"{name}: train {onednn:.1f} ms (oneDNN) vs {caffe_own:.1f} ms (Caffe), "
                  f"ratio {r['train_ratio']:.2f}; forward {forward['ms']:.1f} ms vs "
                  f"OpenCV {forward['opencv_ms'] or float('nan'):.1f} ms", file=sys.stderr)
    c, n = results["conv4"], results["lenet"]
    fwd = [r["forward_ratio_to_opencv"] for r in (c, n)]
    results["goals"] = {
        "conv4_train_ratio": c["train_ratio"] <= GOALS["conv4_train_ratio"],
        "lenet_train_ratio": n["train_ratio"] <= GOALS["lenet_train_ratio"],
        "forward_ratio_to_opencv": (None if None in fwd
                                    else max(fwd) <= GOALS["forward_ratio_to_opencv"]),
        "conv4_two_threads": c["two_threads"] >= GOALS["conv4_two_threads"],
    }
    results["cpu_count"] = os.cpu_count()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
