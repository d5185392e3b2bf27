#!/usr/bin/env python3
"""A synchronous Python data layer against caffe_pylayer.PrefetchingDataLayer.

One run measures, per solver iteration of a small convolution net (Caffe on
one BLAS thread):

- compute_ms (C): the net with a data layer that hands out one cached batch;
- load_ms (L): one batch loaded by the data set alone: random pixels turned
  into a normalised float batch with NumPy (work that releases the GIL, as
  decoding and resizing do), calibrated in this run to take about C;
- synchronous_ms (S): a classic data layer that loads in its forward (S ~ L + C);
- prefetch_ms (P): the same data set behind PrefetchingDataLayer (threads);
- ratio_to_max: P / max(L, C), 1.0 when loading hides entirely behind compute.

"process" repeats S and P with a pure-Python loader (it holds the GIL, so a
thread cannot overlap it) and process workers. The last line printed is one
JSON object with all of these.

    build/env/bin/python bench/bench_data_layer.py [--iters 40]

Run by hand; never a test. Needs two cores to show overlap.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # Caffe on one core, before NumPy loads BLAS
os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np  # noqa: E402

import caffe  # noqa: E402
from caffe_pylayer import PrefetchingDataLayer  # noqa: E402

BATCH, CLASSES = 4, 10


class ImageBatches:
    """Random uint8 images made into a normalised float batch: NumPy work that
    releases the GIL. ``rounds`` scales the cost (calibrated against the net)."""

    def __init__(self, params):
        self.rounds = params["rounds"]

    def __len__(self):
        return 64

    def load_batch(self, index, rng):
        pixels = rng.integers(0, 256, (BATCH, 3, 64, 64), dtype=np.uint8)
        batch = pixels.astype(np.float32)
        for _ in range(self.rounds):  # stands for decode + resize + augment
            np.multiply(batch, 1.0001, out=batch)
            np.sqrt(batch * batch + 1.0, out=batch)
        batch -= batch.mean(axis=(0, 2, 3), keepdims=True)
        labels = rng.standard_normal((BATCH, CLASSES)).astype(np.float32)
        return batch, labels


class PurePythonBatches(ImageBatches):
    """The same shapes, built by a Python loop that holds the GIL throughout."""

    def load_batch(self, index, rng):
        total = 0
        for i in range(self.rounds):
            total = (total * 31 + i) % 1000003
        batch = np.full((BATCH, 3, 64, 64), total % 7, np.float32)
        return batch, np.zeros((BATCH, CLASSES), np.float32)


class CachedData(caffe.Layer):
    """One batch, loaded once: the net's compute alone."""

    def setup(self, bottom, top):
        self.batch = ImageBatches({"rounds": 0}).load_batch(0, np.random.default_rng(0))

    def reshape(self, bottom, top):
        for blob, array in zip(top, self.batch):
            blob.reshape(*array.shape)

    def forward(self, bottom, top):
        for blob, array in zip(top, self.batch):
            blob.data[...] = array

    def backward(self, top, propagate_down, bottom):
        pass


class SynchronousData(CachedData):
    """The classic data layer: loads each batch inside forward."""

    dataset = ImageBatches

    def setup(self, bottom, top):
        self.data = self.dataset(json.loads(self.param_str))
        self.index = 0
        self.batch = self.data.load_batch(0, np.random.default_rng(0))

    def forward(self, bottom, top):
        self.batch = self.data.load_batch(self.index, np.random.default_rng(self.index))
        self.index += 1
        super().forward(bottom, top)


class SynchronousPurePython(SynchronousData):
    dataset = PurePythonBatches


class PrefetchedImages(PrefetchingDataLayer):
    dataset = ImageBatches
    param_defaults = {"rounds": 0}


class PrefetchedPurePython(PrefetchingDataLayer):
    dataset = PurePythonBatches
    param_defaults = {"rounds": 0}


NET = """
layer {{ name: "data" type: "Python" top: "x" top: "y"
        python_param {{ module: "bench_data_layer" layer: "{layer}" param_str: '{params}' }} }}
layer {{ name: "c1" type: "Convolution" bottom: "x" top: "c1" convolution_param {{
        num_output: 32 kernel_size: 3 pad: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "r1" type: "ReLU" bottom: "c1" top: "c1" }}
layer {{ name: "p1" type: "Pooling" bottom: "c1" top: "p1" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "c2" type: "Convolution" bottom: "p1" top: "c2" convolution_param {{
        num_output: {width} kernel_size: 3 pad: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "r2" type: "ReLU" bottom: "c2" top: "c2" }}
layer {{ name: "p2" type: "Pooling" bottom: "c2" top: "p2" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "p2" top: "pred" inner_product_param {{
        num_output: {classes} weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "Python" bottom: "pred" bottom: "y" top: "loss"
        python_param {{ module: "pyloss" layer: "EuclideanLossLayer" }} loss_weight: 1 }}
"""


def ms_per_iteration(layer: str, params: dict, iters: int, width: int) -> float:
    """Median-of-3 time per solver iteration of the net with this data layer."""
    with tempfile.TemporaryDirectory() as folder:
        net = os.path.join(folder, "net.prototxt")
        with open(net, "w") as f:
            f.write(NET.format(layer=layer, params=json.dumps(params), width=width,
                               classes=CLASSES))
        solver = os.path.join(folder, "solver.prototxt")
        with open(solver, "w") as f:
            f.write(f'net: "{net}"\nbase_lr: 0\nlr_policy: "fixed"\nmax_iter: 100000\n'
                    "display: 0\nsnapshot_after_train: false\nsolver_mode: CPU\n")
        s = caffe.get_solver(solver)
        s.step(3)  # warm up, and let the prefetch queue fill
        times = []
        for _ in range(3):
            start = time.perf_counter()
            s.step(iters)
            times.append((time.perf_counter() - start) * 1000 / iters)
        del s
        return sorted(times)[1]


def load_ms(dataset: type, rounds: int, count: int = 10) -> float:
    data = dataset({"rounds": rounds})
    data.load_batch(0, np.random.default_rng(0))
    start = time.perf_counter()
    for i in range(count):
        data.load_batch(i, np.random.default_rng(i))
    return (time.perf_counter() - start) * 1000 / count


def calibrate(dataset: type, target_ms: float, probe_rounds: int) -> int:
    """Rounds that make one batch take about target_ms to load."""
    base = load_ms(dataset, 0)
    per_round = (load_ms(dataset, probe_rounds) - base) / probe_rounds
    return max(1, round((target_ms - base) / per_round))


def measure(sync_layer: str, prefetch_layer: str, dataset: type, compute: float, iters: int,
            width: int, extra: dict, probe_rounds: int) -> dict:
    rounds = calibrate(dataset, compute, probe_rounds)
    load = load_ms(dataset, rounds)
    sync = ms_per_iteration(sync_layer, {"rounds": rounds}, iters, width)
    prefetch = ms_per_iteration(prefetch_layer, {"rounds": rounds, **extra}, iters, width)
    return {"load_ms": round(load, 2), "compute_ms": round(compute, 2),
            "synchronous_ms": round(sync, 2), "prefetch_ms": round(prefetch, 2),
            "ratio_to_max": round(prefetch / max(load, compute), 3),
            "ratio_to_synchronous": round(prefetch / sync, 3), "workers": extra}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=40, help="iterations per timing (3 timings)")
    parser.add_argument("--width", type=int, default=64, help="channels of the second convolution")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # Caffe imports this module
    caffe.set_mode_cpu()
    compute = ms_per_iteration("CachedData", {}, args.iters, args.width)
    threads = measure("SynchronousData", "PrefetchedImages", ImageBatches, compute, args.iters,
                      args.width, {"workers": 1}, probe_rounds=20)
    processes = measure("SynchronousPurePython", "PrefetchedPurePython", PurePythonBatches,
                        compute, args.iters, args.width,
                        {"workers": 1, "workers_mode": "process", "start_method": "spawn"},
                        probe_rounds=100000)
    print(f"compute {compute:.1f} ms/iter; threads: load {threads['load_ms']} ms, synchronous "
          f"{threads['synchronous_ms']} ms, prefetching {threads['prefetch_ms']} ms; pure-Python "
          f"loader with a process worker: synchronous {processes['synchronous_ms']} ms, "
          f"prefetching {processes['prefetch_ms']} ms", file=sys.stderr)
    print(json.dumps({**{k: v for k, v in threads.items() if k != "workers"},
                      "process": processes, "cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
