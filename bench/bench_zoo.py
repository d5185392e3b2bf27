#!/usr/bin/env python3
"""Model-zoo deploy nets on Caffe's CPU engines and on OpenCV's DNN module, at each ISA level.

The nets are the deploy prototxts their authors publish, unchanged (sha256 checked):

- caffenet: BVLC's reference CaffeNet (BVLC/caffe, models/bvlc_reference_caffenet);
- googlenet: BVLC's GoogLeNet (BVLC/caffe, models/bvlc_googlenet);
- resnet50: ResNet-50 (KaimingHe/deep-residual-networks, prototxt/ResNet-50-deploy.prototxt);
- mobilenet: MobileNet v1 (shicai/MobileNet-Caffe, mobilenet_deploy.prototxt), which names
  engine: CAFFE on its depthwise convolutions: measured as published and with
  CAFFE_ENGINE=onednn.

Weights are random (the published .caffemodel files are large and need not be fetched for
speed): saved once, read by all three engines. For each ISA level (the CPU's own, and AVX2
where the CPU has more, as in bench_cpu_engine.py), one thread, milliseconds (median of
--iters):

- forward at batch 1 and 8: the default engine, Caffe's own code (CAFFE_ENGINE=caffe) and
  OpenCV 4.x; the largest difference of the last layer's input from Caffe's engine's, relative
  to its largest value;
- train: a forward + backward at batch 8 (force_backward, the last layer's diff set), both
  engines;
- limit: for the nets of dense convolutions, the forward at batch 8 over what the machine
  allows (2 x the multiply-adds of the convolutions and inner products over the single-thread
  sgemm rate numpy measures in the same run: OpenBLAS's own choice of kernels and, on a CPU
  with AVX-512, its SkylakeX ones, the faster of the two).

The goals, per level: forward <= 0.8x OpenCV on every net and batch; no forward or training
step slower than Caffe's engine (within 5%); limit <= 1.25; outputs within 1e-4 relative.
The last line printed is one JSON object with all of these.

    python bench/bench_zoo.py --models DIR [--fetch] [--iters 10]

DIR holds the four prototxts (caffenet.prototxt, ...). --fetch downloads the missing ones
from their repositories at the commits below. OpenCV is a benchmark-only dependency
(pip install 'opencv-python-headless<5'); without it, its entries are null. Run by hand;
never a test.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_cpu_engine import AVX2_ENV, cpu_name, native_isa

# name: (repository, commit, path, sha256 of the file)
MODELS = {
    "caffenet": ("BVLC/caffe", "99bd99795dcdf0b1d3086a8d67ab1782a8a08383",
                 "models/bvlc_reference_caffenet/deploy.prototxt",
                 "922248a4d2f6aac1cc8e7e5dbd996cc2ecd3356480d67c198f6cf96b12311a04"),
    "googlenet": ("BVLC/caffe", "99bd99795dcdf0b1d3086a8d67ab1782a8a08383",
                  "models/bvlc_googlenet/deploy.prototxt",
                  "fa36cd4112a3240a29600a5aa35333f31bec33daa1a6085b0af308a9f50f0c50"),
    "resnet50": ("KaimingHe/deep-residual-networks", "872cc54494de59887bb3568d493dfb8e24073aac",
                 "prototxt/ResNet-50-deploy.prototxt",
                 "2f8fb64f68c6bcda94eb2640f80aed94efb91664122e72a6b7587012cc57dedc"),
    "mobilenet": ("shicai/MobileNet-Caffe", "a0c07ff3717c381e281a16f91e2b86526e630710",
                  "mobilenet_deploy.prototxt",
                  "8e6a26b8f2c7cf7a066d571660cfd8a1544a5a25399df33ad499f3d733f16729"),
}
DENSE = ("caffenet", "googlenet", "resnet50")  # bound by multiply-adds, not memory
GOALS = {"forward_ratio_to_opencv": 0.8, "ratio_to_caffe": 1.05, "limit": 1.25,
         "max_rel_diff": 1e-4}


def fetch(models: Path) -> None:
    models.mkdir(parents=True, exist_ok=True)
    for name, (repo, commit, path, _) in MODELS.items():
        target = models / f"{name}.prototxt"
        if not target.exists():
            url = f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"
            with urllib.request.urlopen(url, timeout=60) as response:
                target.write_bytes(response.read())


def check(models: Path) -> None:
    for name, (repo, commit, path, sha256) in MODELS.items():
        target = models / f"{name}.prototxt"
        if not target.exists():
            sys.exit(f"{target} is missing: {repo} {path} at {commit} (or run with --fetch)")
        if hashlib.sha256(target.read_bytes()).hexdigest() != sha256:
            sys.exit(f"{target} is not {repo}'s {path} at {commit} (sha256 differs)")


def random_weights(net, rng) -> None:
    """He-scaled weights; BatchNorm statistics and Scale factors a trained net could have."""
    types = dict(zip(net._layer_names, (layer.type for layer in net.layers)))
    for name, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            shape = blob.data.shape
            if types[name] == "BatchNorm":
                blob.data[...] = [0.1 * rng.standard_normal(shape), rng.random(shape) + 0.5,
                                  1.0][i]
            elif types[name] == "Scale":
                blob.data[...] = (1 + 0.1 * rng.standard_normal(shape) if i == 0
                                  else 0.1 * rng.standard_normal(shape))
            elif blob.data.ndim > 1:
                blob.data[...] = rng.standard_normal(shape) * (2 / blob.data[0].size) ** 0.5
            else:
                blob.data[...] = 0.01 * rng.standard_normal(shape)


def median_ms(step, iters: int) -> float:
    step()
    step()  # primitives made, memory touched
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        step()
        times.append((time.perf_counter() - started) * 1e3)
    return sorted(times)[len(times) // 2]


def multiply_adds(net) -> int:
    total = 0
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type not in ("Convolution", "InnerProduct"):
            continue
        weights = net.params[name][0].data
        top = net.blobs[net.top_names[name][0]].data
        per_output = weights[0].size   # inputs per output value (channels / group x kernel)
        total += top.size * per_output
    return total


def measure(kind: str, model: str, batch: int, iters: int, folder: str) -> dict:
    """One measurement, in this (child) process."""
    import numpy as np
    import caffe

    proto = os.path.join(folder, f"{model}.prototxt")
    weights = os.path.join(folder, f"{model}.caffemodel")
    if kind == "weights":
        net = caffe.Net(proto, caffe.TEST)
        random_weights(net, np.random.default_rng(1))
        net.save(weights)
        return {}
    if kind == "sgemm":
        a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
        return {"gflops": 2 * 1024**3 / median_ms(lambda: a @ a, iters) / 1e6}
    data = None
    if kind == "opencv":
        try:
            import cv2
        except ImportError:
            return {"ms": None}
        cv2.setNumThreads(1)
        net = cv2.dnn.readNetFromCaffe(proto, weights)
        shape = caffe.Net(proto, caffe.TEST).blobs[caffe_input(proto)].data.shape
        data = np.random.default_rng(2).standard_normal((batch, *shape[1:])).astype(np.float32)
        net.setInput(data)
        return {"ms": median_ms(net.forward, iters), "opencv": cv2.__version__}
    if kind == "train":
        text = Path(proto).read_text()
        proto = os.path.join(folder, f"{model}-train.prototxt")
        Path(proto).write_text("force_backward: true\n" + text)
    net = caffe.Net(proto, caffe.TEST, weights=weights)
    name = net.inputs[0]
    shape = (batch, *net.blobs[name].data.shape[1:])
    net.blobs[name].reshape(*shape)
    net.reshape()
    net.blobs[name].data[...] = np.random.default_rng(2).standard_normal(shape)
    last = net.bottom_names[net._layer_names[-1]][0]   # the logits, before softmax
    if kind == "train":
        net.blobs[net.outputs[0]].diff[...] = 1e-3
        return {"ms": median_ms(lambda: (net.forward(), net.backward()), iters)}
    ms = median_ms(net.forward, iters)
    net.forward()
    output = net.blobs[last].data
    np.save(os.path.join(folder, f"{model}-{batch}-{os.environ['CAFFE_ENGINE']}.npy"), output)
    return {"ms": ms, "multiply_adds": multiply_adds(net)}


def caffe_input(proto: str) -> str:
    import caffe
    return caffe.Net(proto, caffe.TEST).inputs[0]


def child(kind: str, model: str, batch: int, iters: int, folder: str, level_env: dict,
          engine: str = "default") -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", GLOG_minloglevel="2",
               CAFFE_ENGINE=engine, **level_env)
    out = subprocess.run([sys.executable, __file__, "--child", kind, model, str(batch),
                          str(iters), folder], env=env, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def rel_diff(folder: str, model: str, batch: int, engine: str) -> float:
    import numpy as np
    got = np.load(os.path.join(folder, f"{model}-{batch}-{engine}.npy"))
    expected = np.load(os.path.join(folder, f"{model}-{batch}-caffe.npy"))
    return float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))


def measure_level(level_env: dict, avx512: bool, iters: int, folder: str) -> dict:
    # OpenBLAS may pick kernels below the CPU's level (AVX2 ones on AMD CPUs
    # with AVX-512): the limit is the faster of its own choice and SkylakeX's.
    kernels = [level_env] + ([{"OPENBLAS_CORETYPE": "SkylakeX"}] if avx512 else [])
    rates = [child("sgemm", "-", 0, iters, folder, env)["gflops"] for env in kernels]
    gflops = max(rates)
    results = {"sgemm_gflops": rates}
    engines = {"default": "default", "caffe": "caffe"}
    for model in MODELS:
        variants = dict(engines, **({"onednn": "onednn"} if model == "mobilenet" else {}))
        r = {"forward_ms": {}, "forward_ratio_to_opencv": {}, "ratio_to_caffe": {},
             "max_rel_diff": {}}
        for batch in (1, 8):
            ms = {v: child("forward", model, batch, iters, folder, level_env, e)
                  for v, e in variants.items()}
            cv = child("opencv", model, batch, iters, folder, level_env)["ms"]
            r["forward_ms"][batch] = {v: m["ms"] for v, m in ms.items()} | {"opencv": cv}
            for v in variants:
                if v == "caffe":
                    continue
                key = f"{v} batch {batch}"
                r["forward_ratio_to_opencv"][key] = ms[v]["ms"] / cv if cv else None
                r["ratio_to_caffe"][key] = ms[v]["ms"] / ms["caffe"]["ms"]
                r["max_rel_diff"][key] = rel_diff(folder, model, batch, v)
            if batch == 8 and model in DENSE:
                limit_ms = 2 * ms["default"]["multiply_adds"] / gflops / 1e6
                r["limit"] = ms["default"]["ms"] / limit_ms
        train = {v: child("train", model, 8, iters, folder, level_env, e)["ms"]
                 for v, e in variants.items()}
        r["train_ms"] = train
        for v in variants:
            if v != "caffe":
                r["ratio_to_caffe"][f"{v} train batch 8"] = train[v] / train["caffe"]
        results[model] = r
        print(f"{model}: forward batch 1 {r['forward_ms'][1]}, train {train}", file=sys.stderr)
    def worst(key: str, variant: str) -> float | None:
        """The largest value of key over the nets, MobileNet as published
        (variant default) or with CAFFE_ENGINE=onednn (variant onednn)."""
        values = [v for m in MODELS for k, v in results[m][key].items()
                  if v is not None and k.startswith("onednn" if m == "mobilenet" and
                                                    variant == "onednn" else "default")]
        return max(values) if values else None
    results["goals"] = {
        "forward_ratio_to_opencv": worst("forward_ratio_to_opencv", "default"),
        "forward_ratio_to_opencv_with_onednn": worst("forward_ratio_to_opencv", "onednn"),
        "ratio_to_caffe": worst("ratio_to_caffe", "default"),
        "ratio_to_caffe_with_onednn": worst("ratio_to_caffe", "onednn"),
        "limit": max(results[m]["limit"] for m in DENSE),
        "max_rel_diff": max(worst("max_rel_diff", "default"), worst("max_rel_diff", "onednn")),
    }
    results["goals_met"] = {k: v is not None and v <= GOALS[k.replace("_with_onednn", "")]
                            for k, v in results["goals"].items()}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, help="the folder of the four prototxts")
    parser.add_argument("--fetch", action="store_true", help="download the missing prototxts")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, model, batch, iters, folder = args.child
        print(json.dumps(measure(kind, model, int(batch), int(iters), folder)))
        return
    if args.models is None:
        parser.error("--models DIR is required")
    if args.fetch:
        fetch(args.models)
    check(args.models)
    isa = native_isa()
    levels = {"native": {}}
    avx512 = "AVX-512" in isa or "AVX512" in isa.upper()
    if avx512:
        levels["AVX2"] = AVX2_ENV
    results = {"cpu": cpu_name(), "native_isa": isa, "levels": {}}
    with tempfile.TemporaryDirectory() as folder:
        for model in MODELS:
            (Path(folder) / f"{model}.prototxt").write_bytes(
                (args.models / f"{model}.prototxt").read_bytes())
            child("weights", model, 1, 1, folder, {})
        for level, env in levels.items():
            print(f"== {level} ({isa if level == 'native' else level})", file=sys.stderr)
            results["levels"][level] = measure_level(env, avx512 and level == "native",
                                                     args.iters, folder)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
