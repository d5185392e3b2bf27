#!/usr/bin/env python3
"""Caffe's CPU engines, and OpenCV's DNN module, on the same two nets, at each ISA level.

The nets:

- conv4: 16x3x64x64 input, four 3x3 convolutions (32, 64, 128, 256 channels),
  each followed by ReLU and 2x2 max pooling, an inner product, softmax loss;
- lenet: Caffe's LeNet, batch 64.

For each ISA level (the CPU's own, and AVX2 where the CPU has more: oneDNN's
ONEDNN_MAX_CPU_ISA=AVX2, OpenBLAS's OPENBLAS_CORETYPE=Haswell and OpenCV's
OPENCV_CPU_DISABLE of the AVX-512 features make it dispatch as an AVX2 CPU),
in milliseconds per iteration (the median of --iters), one thread unless said:

- train: forward + backward with the default engine (oneDNN) and with
  Caffe's own code (CAFFE_ENGINE=caffe), their ratio, and each layer's forward
  and backward time with both (the net stepped one layer at a time);
- forward: the deploy net (Input to the last inner product), forward only,
  with both engines and with OpenCV DNN 4.x reading the same weights from a
  saved .caffemodel, outputs compared;
- two_threads: conv4's train time on one thread over two;
- peak_mb: the memory 3 training iterations add to the process at its peak
  (maximum resident size less the size before the net was made), both engines;
  deploy_mb: the resident memory a deploy net adds by the end of its first
  forward. Each also as net_peak_mb and deploy_net_mb: the same after a small
  net of the same layer types was made, run and freed first, so that what a
  process pays once (oneDNN's code pages, its JIT kernels' buffers, the
  engine's per-thread scratch buffers) is not counted;
- impl: the implementation oneDNN ran for each layer, forward and backward
  (ONEDNN_VERBOSE), or "caffe" where the layer ran Caffe's code.

The goals, per level: conv4 train ratio <= 0.50, LeNet <= 0.60; deploy forward
<= 0.8x OpenCV at AVX-512, <= 1.0x at AVX2; two threads >= 1.8x one; peak
memory <= 1.2x Caffe's engine's (the net's own and the process's, training
and deploy); and no layer type slower than Caffe's code
(forward and backward summed over both nets, within 5%).

The last line printed is one JSON object with all of these.

    build/env/bin/python bench/bench_cpu_engine.py [--iters 20]

OpenCV is a benchmark-only dependency: pip install 'opencv-python-headless<5'
(OpenCV 5 has no Caffe importer); without it, the OpenCV entries are null.
Run by hand; never a test. Each measurement runs in a child process, so the
thread counts and ISA settings are set before the libraries load.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

NETS = ("conv4", "lenet")
GOALS = {"conv4_train_ratio": 0.50, "lenet_train_ratio": 0.60,
         "forward_ratio_to_opencv": {"avx512": 0.8, "avx2": 1.0},
         "conv4_two_threads": 1.8, "peak_memory_ratio": 1.2, "layer_ratio": 1.05}
# What makes an AVX-512 CPU dispatch as an AVX2 one, library by library.
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell",
            "OPENCV_CPU_DISABLE": "AVX512_SKX,AVX512_COMMON,AVX512_KNL,AVX512_KNM,"
                                  "AVX512_CNL,AVX512_CLX,AVX512_ICL"}
# The memory measurements (child kinds) and their keys in the results.
MEMORY_KINDS = {"memory": "peak_mb", "memory_warm": "net_peak_mb",
                "deploy_memory": "deploy_mb", "deploy_memory_warm": "deploy_net_mb"}
# oneDNN's primitives that are a layer's work, not a layout change.
LAYER_PRIMITIVES = ("convolution", "pooling", "eltwise", "inner_product")


def net_spec(name: str, deploy: bool):
    """The net as a NetSpec: training (data from a DummyData layer, softmax
    loss) or deploy (an Input layer, ending at the last inner product)."""
    import caffe
    from caffe import layers as L, params as P

    shape = {"conv4": [16, 3, 64, 64], "lenet": [64, 1, 28, 28], "warmup": [2, 3, 12, 12]}[name]
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
    if name == "warmup":   # the layer types of both nets, small
        n.conv = L.Convolution(top, num_output=8, kernel_size=3, **weights)
        n.relu = L.ReLU(n.conv, in_place=True)
        n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2)
        n.ip = L.InnerProduct(n.pool, num_output=4, **weights)
        last = n.ip
    elif name == "conv4":
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


def layer_steps(net):
    """(name, type, pass, step) for every layer's forward, then every
    backward in the order Caffe runs them."""
    names, layers = list(net._layer_names), list(net.layers)
    steps = [(n, l.type, "forward", lambda i=i: net._forward(i, i)) for i, (n, l) in
             enumerate(zip(names, layers))]
    steps += [(n, l.type, "backward", lambda i=i: net._backward(i, i)) for i, (n, l) in
              reversed(list(enumerate(zip(names, layers))))]
    return steps


def per_layer_ms(net, iters: int) -> dict:
    steps = layer_steps(net)
    for *_, step in steps:
        step()
    times = defaultdict(list)
    for _ in range(iters):
        for name, _, kind, step in steps:
            started = time.perf_counter()
            step()
            times[(name, kind)].append((time.perf_counter() - started) * 1e3)
    out = {}
    for name, type_, kind, _ in steps:
        out.setdefault(name, {"type": type_})[kind] = statistics.median(times[(name, kind)])
    return out


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def impl_per_layer(net) -> dict:
    """What oneDNN's verbose log says each layer ran (ONEDNN_VERBOSE=1 is set
    by the parent): the log goes to fd 1, read back after each step."""
    libc = ctypes.CDLL(None)
    steps = layer_steps(net)
    for *_, step in steps:
        step()  # primitives made: the log of the next pass is execution only
    out = {}
    with tempfile.TemporaryFile("w+") as log:
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            marks = []
            for name, type_, kind, step in steps:
                step()
                libc.fflush(None)
                marks.append((name, type_, kind, os.lseek(1, 0, os.SEEK_CUR)))
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        text = log.read()
    start = 0
    for name, type_, kind, end in marks:
        used = []
        for line in text[start:end].splitlines():
            fields = line.split(",")
            if len(fields) > 6 and fields[1] == "exec" and fields[3] in LAYER_PRIMITIVES:
                used.append(f"{fields[3]}:{fields[4]}:{fields[5]}")
        start = end
        entry = out.setdefault(name, {"type": type_})
        entry[kind] = used or ("caffe" if type_ in ("Convolution", "Pooling", "ReLU",
                                                     "InnerProduct") else None)
    return out


def measure(kind: str, name: str, iters: int, folder: str) -> dict:
    """One measurement, in this (child) process."""
    import caffe  # noqa: F401  (loaded before the memory baseline)
    import numpy as np

    if kind in MEMORY_KINDS:
        if kind.endswith("_warm"):
            warm, proto = load_net("warmup", deploy=False)
            os.unlink(proto)
            warm.forward()
            warm.backward()
            del warm
        deploy = kind.startswith("deploy")
        before = resident_mb()
        net, proto = load_net(name, deploy=deploy)
        os.unlink(proto)
        if deploy:  # resident after the first forward
            net.forward()
            return {"mb": resident_mb() - before}
        for _ in range(3):
            net.forward()
            net.backward()
        return {"mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before}
    if kind in ("train", "impl"):
        net, proto = load_net(name, deploy=False)
        os.unlink(proto)
        if kind == "impl":
            return {"layers": impl_per_layer(net)}
        return {"ms": median_ms(lambda: (net.forward(), net.backward()), iters),
                "layers": per_layer_ms(net, iters)}

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


def child(kind: str, name: str, engine: str, iters: int, folder: str, level_env: dict,
          threads: int = 1) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               GLOG_minloglevel="2", CAFFE_ENGINE=engine, **level_env)
    if kind == "impl":
        env["ONEDNN_VERBOSE"] = "1"
    out = subprocess.run([sys.executable, __file__, "--child", kind, name, str(iters), folder],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def native_isa() -> str:
    """oneDNN's name for the ISA it dispatches to here, from its verbose header."""
    code = ("import caffe, numpy as np\n"
            "from caffe import layers as L\n"
            "n = caffe.NetSpec(); n.data = L.Input(shape=dict(dim=[1, 8, 4, 4]))\n"
            "n.conv = L.Convolution(n.data, num_output=8, kernel_size=1)\n"
            "import tempfile\n"
            "f = tempfile.NamedTemporaryFile('w', suffix='.prototxt')\n"
            "f.write(str(n.to_proto())); f.flush()\n"
            "caffe.Net(f.name, caffe.TEST).forward()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, ONEDNN_VERBOSE="1", GLOG_minloglevel="2")).stdout
    return next(line.split("isa:", 1)[1] for line in out.splitlines() if ",isa:" in line)


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def by_type(layers: dict) -> dict:
    """Milliseconds summed per layer type and pass."""
    sums = defaultdict(float)
    for entry in layers.values():
        for kind in ("forward", "backward"):
            if kind in entry:
                sums[f"{entry['type']} {kind}"] += entry[kind]
    return sums


def measure_level(level_env: dict, avx512: bool, iters: int, folder: str) -> dict:
    results = {}
    default_types, caffe_types = defaultdict(float), defaultdict(float)
    for name in NETS:
        onednn = child("train", name, "default", iters, folder, level_env)
        caffe_own = child("train", name, "caffe", iters, folder, level_env)
        forward = child("forward", name, "default", iters, folder, level_env)
        caffe_forward = child("forward", name, "caffe", iters, folder, level_env)["ms"]
        memory = {(kind, engine): child(kind, name, engine, iters, folder, level_env)["mb"]
                  for kind in MEMORY_KINDS for engine in ("default", "caffe")}
        impl = child("impl", name, "default", iters, folder, level_env)["layers"]
        layers = {layer: {"type": entry["type"],
                          "forward_ms": {"onednn": entry["forward"],
                                         "caffe": caffe_own["layers"][layer]["forward"]},
                          "backward_ms": {"onednn": entry["backward"],
                                          "caffe": caffe_own["layers"][layer]["backward"]},
                          "impl": {k: impl[layer].get(k) for k in ("forward", "backward")}}
                  for layer, entry in onednn["layers"].items()}
        for type_pass, ms in by_type(onednn["layers"]).items():
            default_types[type_pass] += ms
        for type_pass, ms in by_type(caffe_own["layers"]).items():
            caffe_types[type_pass] += ms
        r = {"train_ms": {"onednn": onednn["ms"], "caffe": caffe_own["ms"]},
             "train_ratio": onednn["ms"] / caffe_own["ms"],
             "forward_ms": {"onednn": forward["ms"], "caffe": caffe_forward,
                            "opencv": forward["opencv_ms"]},
             "forward_ratio_to_opencv": (forward["ms"] / forward["opencv_ms"]
                                         if forward["opencv_ms"] else None),
             "opencv_max_rel_diff": forward["opencv_max_rel_diff"],
             "opencv": forward["opencv"],
             **{key: {"onednn": memory[kind, "default"], "caffe": memory[kind, "caffe"]}
                for kind, key in MEMORY_KINDS.items()},
             **{key.replace("_mb", "_memory_ratio"): memory[kind, "default"] / memory[kind, "caffe"]
                for kind, key in MEMORY_KINDS.items()},
             "layers": layers}
        if name == "conv4":
            two = child("train", name, "default", iters, folder, level_env, threads=2)["ms"]
            r["train_ms"]["onednn_2_threads"] = two
            r["two_threads"] = onednn["ms"] / two
        results[name] = r
        print(f"{name}: train {onednn['ms']:.1f} ms (oneDNN) vs {caffe_own['ms']:.1f} ms "
              f"(Caffe), ratio {r['train_ratio']:.2f}; forward {forward['ms']:.1f} ms vs "
              f"OpenCV {forward['opencv_ms'] or float('nan'):.1f} ms", file=sys.stderr)
    type_ratios = {t: default_types[t] / caffe_types[t] for t in sorted(default_types)
                   if caffe_types[t] > 0 and t.split()[0] in ("Convolution", "Pooling", "ReLU",
                                                             "InnerProduct")}
    results["layer_type_ratios"] = type_ratios
    c, n = results["conv4"], results["lenet"]
    fwd = [r["forward_ratio_to_opencv"] for r in (c, n)]
    fwd_goal = GOALS["forward_ratio_to_opencv"]["avx512" if avx512 else "avx2"]
    results["goals"] = {
        "conv4_train_ratio": c["train_ratio"] <= GOALS["conv4_train_ratio"],
        "lenet_train_ratio": n["train_ratio"] <= GOALS["lenet_train_ratio"],
        "forward_ratio_to_opencv": None if None in fwd else max(fwd) <= fwd_goal,
        "conv4_two_threads": c["two_threads"] >= GOALS["conv4_two_threads"],
        **{key.replace("_mb", "_memory_ratio"):
           max(c[key.replace("_mb", "_memory_ratio")], n[key.replace("_mb", "_memory_ratio")])
           <= GOALS["peak_memory_ratio"] for key in MEMORY_KINDS.values()},
        "no_layer_type_slower": all(r <= GOALS["layer_ratio"] for r in type_ratios.values()),
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, name, iters, folder = args.child
        print(json.dumps(measure(kind, name, int(iters), folder)))
        return

    isa = native_isa()
    avx512 = "AVX-512" in isa or "AVX512" in isa.upper()
    levels = {"native": {}}
    if avx512:
        levels["AVX2"] = AVX2_ENV
    results = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "native_isa": isa, "levels": {}}
    with tempfile.TemporaryDirectory() as folder:
        for level, env in levels.items():
            print(f"== {level} ({isa if level == 'native' else level})", file=sys.stderr)
            results["levels"][level] = measure_level(env, avx512 and level == "native",
                                                     args.iters, folder)
    if not avx512:
        results["levels"]["AVX2"] = "native"  # this CPU's own level is AVX2 or below
    results["goals"] = {level: r["goals"] for level, r in results["levels"].items()
                        if isinstance(r, dict)}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
