"""The oneDNN engine of the CPU layers: it runs by default in CPU mode, trains
to the losses of Caffe's own code, falls back where it must (saying so once per
layer), sees new weights, and is chosen by engine: or CAFFE_ENGINE."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import caffe
from conftest import REFERENCE_ONLY, cpu_has_avx512, linked_libraries, on_onednn_here, run_caffe_tool

# What ONEDNN_VERBOSE calls the primitives of the four engine layers. A ReLU
# (eltwise) that names no engine runs oneDNN's backward only: its forward is
# Caffe's, which propagates NaN (oneDNN's maps it to 0).
ENGINE_PRIMITIVES = {"convolution", "pooling", "eltwise", "inner_product"}

# Two convolutions (one grouped and dilated), MAX and AVE pooling, ReLU with a
# negative slope, two inner products, softmax loss.
NET = """
name: "engine"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 32 dim: 1 dim: 12 dim: 12 }} }} }}
layer {{ name: "label" type: "Input" top: "label" input_param {{ shape {{ dim: 32 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 {engine}
          weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param {{ negative_slope: 0.1 {engine} }} }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param {{ pool: MAX kernel_size: 3 stride: 2 {engine} }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param {{ num_output: 16 kernel_size: 3 dilation: 2 pad: 2 group: 2 {engine}
          weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" relu_param {{ {engine} }} }}
layer {{ name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param {{ pool: AVE kernel_size: 2 stride: 2 {engine} }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
        inner_product_param {{ num_output: 32 {engine} weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu3" type: "ReLU" bottom: "ip1" top: "ip1" relu_param {{ {engine} }} }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param {{ num_output: 4 transpose: true {engine} weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""
SOLVER = """
net: "{net}"
base_lr: 0.05
momentum: 0.9
lr_policy: "fixed"
random_seed: 7
max_iter: 1000
display: 0
snapshot_after_train: false
solver_mode: CPU
"""

# Trains NET from one seed on a fixed data set of four patterns (a bright
# quadrant each) and prints the losses as JSON; run in a child process, so
# that ONEDNN_VERBOSE (read once, when oneDNN starts) shows the primitives.
TRAIN = """
import json, sys
import numpy as np
import caffe
caffe.set_mode_cpu()
solver = caffe.SGDSolver(sys.argv[1])
rng = np.random.default_rng(0)
labels = np.arange(32) % 4
images = rng.normal(0, 0.3, (32, 1, 12, 12)).astype(np.float32)
for i, label in enumerate(labels):
    row, col = divmod(int(label), 2)
    images[i, 0, row * 6:row * 6 + 6, col * 6:col * 6 + 6] += 1.0
losses = []
for _ in range(40):
    solver.net.blobs["data"].data[...] = images
    solver.net.blobs["label"].data[...] = labels
    solver.step(1)
    losses.append(float(solver.net.blobs["loss"].data))
print(json.dumps(losses))
"""


def executed(stdout: str) -> list[list[str]]:
    """oneDNN's exec lines (ONEDNN_VERBOSE) from their engine on: [engine, kind,
    implementation, prop_kind, ..., problem, time]. Where "exec" stands varies
    by version ("onednn_verbose,exec," in 3.2, "onednn_verbose,v1,primitive,exec,"
    in later ones)."""
    rows = []
    for line in stdout.splitlines():
        fields = line.split(",")
        if fields[0] == "onednn_verbose" and "exec" in fields:
            rows.append(fields[fields.index("exec") + 1:])
    return rows


def engine_clause(engine: str | None) -> str:
    return f"engine: {engine}" if engine else ""


def train(tmp_path: Path, engine: str | None, env_extra: dict[str, str] | None = None):
    """Losses of 40 SGD steps, and the primitives oneDNN ran: {kind: implementations},
    and {kind/prop_kind: implementations}."""
    folder = tmp_path / (engine or "default")
    folder.mkdir()
    net = folder / "net.prototxt"
    net.write_text(NET.format(engine=engine_clause(engine)))
    solver = folder / "solver.prototxt"
    solver.write_text(SOLVER.format(net=net))
    env = dict(os.environ, ONEDNN_VERBOSE="1", GLOG_minloglevel="1", **(env_extra or {}))
    result = subprocess.run([sys.executable, "-c", TRAIN, str(solver)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ran: dict[str, set[str]] = {}
    for _, kind, implementation, prop_kind, *_ in executed(result.stdout):
        ran.setdefault(kind, set()).add(implementation)
        ran.setdefault(f"{kind}/{prop_kind}", set()).add(implementation)
    return json.loads(result.stdout.strip().splitlines()[-1]), ran


def is_reference(implementation: str) -> bool:
    return implementation.startswith(("ref", "simple", "gemm:ref"))


# oneDNN's kernels depend on the ISA level: the native one, what a CPU without
# AVX-512 or without AVX has, and a value oneDNN does not know (it ignores it).
ISA_LEVELS = [None, "AVX2", "SSE41", "NOT_AN_ISA"]


@pytest.mark.parametrize("isa", ISA_LEVELS, ids=[i or "native" for i in ISA_LEVELS])
def test_training_with_onednn_reaches_the_losses_of_caffes_engine(tmp_path, isa):
    env = {"ONEDNN_MAX_CPU_ISA": isa} if isa else {}
    onednn, ran = train(tmp_path, None, env)
    explicit, ran_explicit = train(tmp_path, "ONEDNN", env)
    own, ran_own = train(tmp_path, "CAFFE", env)
    assert ENGINE_PRIMITIVES <= ran_explicit.keys()
    assert on_onednn_here({"convolution", "pooling", "eltwise/backward_data"}) <= ran.keys()
    assert "eltwise/forward_training" not in ran
    assert not ran_own.keys() & ENGINE_PRIMITIVES
    # A layer that names no engine never runs oneDNN's reference loops (it runs
    # Caffe's code instead); pooling, which has only those for the plain layout
    # below AVX-512, runs in the blocked layout there (asserted above). An inner
    # product runs Caffe's code, forward and backward, in a net that trains.
    assert not any(is_reference(i) for kind in ENGINE_PRIMITIVES for i in ran.get(kind, ())), ran
    assert "inner_product" not in ran and "inner_product/backward_weights" in ran_explicit
    assert onednn[-1] <= onednn[0] / 10, onednn  # it learns
    # The same start (one seed) and data: the same losses, up to rounding.
    for losses in (onednn, explicit):
        np.testing.assert_allclose(losses[:10], own[:10], rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(losses, own, rtol=0.05, atol=1e-4)


# 1x1 convolutions (one with stride 2) between two 3x3 ones, as in ResNet's
# bottlenecks; force_backward, so data and parameter gradients are computed.
ONE_BY_ONE = """
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 16 dim: 14 dim: 14 } } }
layer { name: "a" type: "Convolution" bottom: "data" top: "a"
        convolution_param { num_output: 24 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "b" type: "Convolution" bottom: "a" top: "b"
        convolution_param { num_output: 32 kernel_size: 1 weight_filler { type: "xavier" }
          bias_filler { type: "constant" value: 0.1 } } }
layer { name: "c" type: "Convolution" bottom: "b" top: "c"
        convolution_param { num_output: 16 kernel_size: 1 stride: 2 bias_term: false
          weight_filler { type: "xavier" } } }
layer { name: "d" type: "Convolution" bottom: "c" top: "d"
        convolution_param { num_output: 8 kernel_size: 3 weight_filler { type: "xavier" } } }
"""
# Forward and backward of argv[1] on the engine CAFFE_ENGINE names; prints every
# blob's data and diff and every parameter gradient as JSON.
ONE_BY_ONE_PROBE = """
import json, sys
import numpy as np
import caffe
caffe.set_mode_cpu()
net = caffe.Net(sys.argv[1], caffe.TRAIN)
rng = np.random.default_rng(5)
for _, blobs in sorted(net.params.items()):
    for blob in blobs:
        blob.data[...] = rng.standard_normal(blob.data.shape) * 0.2
net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].data.shape)
net.forward()
net.blobs["d"].diff[...] = rng.standard_normal(net.blobs["d"].diff.shape)
net.backward()
print(json.dumps({"blobs": {k: [b.data.tolist(), b.diff.tolist()] for k, b in net.blobs.items()},
                  "params": {k: [b.diff.tolist() for b in v] for k, v in net.params.items()}}))
"""


@pytest.mark.parametrize("isa", [None, "AVX2"], ids=["native", "AVX2"])
def test_1x1_convolutions_run_on_caffes_layout_with_caffes_values(write_file, isa):
    """A 1x1 convolution is one GEMM an image on Caffe's layout: oneDNN runs
    it there, forward and backward, without copying activations or weights
    into its own layouts (docs/cpu-engine.md); the 3x3 ones pick theirs."""
    net = write_file("net.prototxt", ONE_BY_ONE)
    env = dict(os.environ, ONEDNN_VERBOSE="1", **({"ONEDNN_MAX_CPU_ISA": isa} if isa else {}))
    results = {}
    for engine in ("default", "caffe"):
        result = subprocess.run([sys.executable, "-c", ONE_BY_ONE_PROBE, str(net)],
                                env=dict(env, CAFFE_ENGINE=engine), capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        results[engine] = (json.loads(result.stdout.strip().splitlines()[-1]),
                           executed(result.stdout))
    (default, rows), (own, _) = results["default"], results["caffe"]
    for group in ("blobs", "params"):
        for name, arrays in own[group].items():
            for i, values in enumerate(arrays):
                np.testing.assert_allclose(default[group][name][i], values, rtol=1e-4,
                                           atol=1e-4, err_msg=f"{group} {name} {i}")
    if "convolution" in REFERENCE_ONLY:  # Caffe's code ran the convolutions
        return
    convolutions = [row for row in rows if row[1] == "convolution"]
    # Per pass (forward, backward data, backward weights): two 1x1 convolutions
    # with their activations in Caffe's layout, two 3x3 ones in oneDNN's.
    plain = [row for row in convolutions
             if all(":abcd:" in token for token in row[4].split()
                    if token.startswith(("src", "dst")))]
    assert len(convolutions) == 12 and len(plain) == 6, [row[2:5] for row in convolutions]
    assert {row[3] for row in plain} == {"forward_training", "backward_data",
                                         "backward_weights"}
    assert not any(is_reference(row[2]) for row in convolutions)
    # b's output, between the two 1x1 convolutions, is never copied, forward or
    # backward; a's (a 3x3 convolution's) is.
    copied = {row[-2] for row in rows if row[1] == "reorder"}
    assert "4x24x14x14" in copied and "4x32x14x14" not in copied, copied


def test_caffe_engine_variable_runs_caffes_own_code(tmp_path):
    _, ran = train(tmp_path, None, {"CAFFE_ENGINE": "caffe"})
    assert not ran.keys() & ENGINE_PRIMITIVES
    _, ran_explicit = train(tmp_path, "ONEDNN", {"CAFFE_ENGINE": "caffe"})
    assert "convolution" in ran_explicit  # a layer's own engine: wins over the variable


def test_a_bad_caffe_engine_value_is_an_error(write_file, monkeypatch):
    monkeypatch.setenv("CAFFE_ENGINE", "onednn-please")
    net = write_file("net.prototxt", NET.format(engine=""))
    with pytest.raises(caffe.CaffeError, match=r"CAFFE_ENGINE=onednn-please: the values are caffe"):
        caffe.Net(str(net), caffe.TEST)


def deploy_outputs(net_path: Path, weights: Path, data: np.ndarray) -> np.ndarray:
    net = caffe.Net(str(net_path), caffe.TEST, weights=str(weights))
    net.blobs["data"].data[...] = data
    net.forward()
    return net.blobs["ip2"].data.copy()


def test_deploy_forward_equals_caffes_engine_and_sees_new_weights(write_file, tmp_path):
    onednn_net = write_file("onednn.prototxt", NET.format(engine=""))
    own_net = write_file("caffe.prototxt", NET.format(engine="engine: CAFFE"))
    weights = tmp_path / "w.caffemodel"
    caffe.Net(str(onednn_net), caffe.TEST).save(str(weights))
    data = np.random.default_rng(1).normal(size=(32, 1, 12, 12)).astype(np.float32)

    net = caffe.Net(str(onednn_net), caffe.TEST, weights=str(weights))
    net.blobs["data"].data[...] = data
    net.forward()
    first = net.blobs["ip2"].data.copy()
    np.testing.assert_allclose(first, deploy_outputs(own_net, weights, data), rtol=1e-4, atol=1e-5)
    # oneDNN keeps reordered weights between calls: a write through .data is seen.
    net.params["conv1"][0].data[...] *= -1
    net.params["ip2"][0].data[...] *= 2
    net.forward()
    second = net.blobs["ip2"].data.copy()
    assert not np.allclose(first, second)
    own = caffe.Net(str(own_net), caffe.TEST, weights=str(weights))
    own.params["conv1"][0].data[...] *= -1
    own.params["ip2"][0].data[...] *= 2
    own.blobs["data"].data[...] = data
    own.forward()
    np.testing.assert_allclose(second, own.blobs["ip2"].data, rtol=1e-4, atol=1e-5)


FALLBACK_NET = """
name: "fallback"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 2 dim: 4 dim: 5 dim: 6 } } }
layer { name: "conv3d" type: "Convolution" bottom: "data" top: "conv3d"
        convolution_param { num_output: 2 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "flat" type: "Reshape" bottom: "conv3d" top: "flat"
        reshape_param { shape { dim: 2 dim: 8 dim: 5 dim: 6 } } }
layer { name: "pool" type: "Pooling" bottom: "flat" top: "pool" top: "mask"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "pool" top: "relu" }
"""


def test_what_onednn_cannot_run_falls_back_with_one_line_per_layer(write_file):
    net = write_file("net.prototxt", FALLBACK_NET)
    result = run_caffe_tool("time", "-model", str(net), "-iterations", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "runs on Caffe's engine" in line]
    assert len(lines) == 2 + ("eltwise" in REFERENCE_ONLY), lines
    assert "Layer conv3d: runs on Caffe's engine, not oneDNN's: a convolution over 3 spatial axes" in lines[0]
    assert "Layer pool: runs on Caffe's engine, not oneDNN's: its second top asks for the MAX pooling mask" in lines[1]
    if "eltwise" in REFERENCE_ONLY:
        assert "Layer relu: runs on Caffe's engine, not oneDNN's: oneDNN has only its reference" in lines[2]


def test_fallback_results_equal_caffes_engine(write_file, monkeypatch):
    path = write_file("net.prototxt", FALLBACK_NET)
    data = np.random.default_rng(2).normal(size=(2, 2, 4, 5, 6)).astype(np.float32)
    outputs = []
    for engine in ("default", "caffe"):
        monkeypatch.setenv("CAFFE_ENGINE", engine)
        caffe.set_random_seed(3)
        net = caffe.Net(str(path), caffe.TEST)
        net.blobs["data"].data[...] = data
        out = net.forward()
        outputs.append((out["relu"].copy(), out["mask"].copy()))
    np.testing.assert_allclose(outputs[0][0], outputs[1][0], rtol=1e-5)
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])


def test_libcaffe_links_onednn():
    """A oneDNN missing at run time is the loader's error naming libdnnl at
    import of caffe, not a failure mid-net: libcaffe links it directly."""
    libcaffe = Path(sys.prefix) / "lib" / "libcaffe.so"
    dynamic = subprocess.run(["readelf", "-d", str(libcaffe)], capture_output=True, text=True,
                             check=True).stdout
    soname = re.search(r"\[(libdnnl\.so\.[0-9.]+)\]", dynamic)
    assert soname, dynamic  # libdnnl.so.3 (oneDNN's own), or Debian's libdnnl.so.3.6
    line = next(line for line in linked_libraries(libcaffe).splitlines() if soname.group(1) in line)
    assert "not found" not in line, line


THREADS_PROBE = """
import sys
import caffe
caffe.set_mode_cpu()
net = caffe.Net(sys.argv[1], caffe.TEST)
net.forward()
"""
THREADS_NET = """
layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "y"
        convolution_param { num_output: 4 kernel_size: 3 engine: ONEDNN } }
"""  # ONEDNN: oneDNN runs it on every CPU (a NEON-only one gives this shape reference code)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def onednn_threads(net: Path, **settings: str) -> int:
    """The thread count oneDNN reports (ONEDNN_VERBOSE's header) for a net's forward."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env.update(settings, ONEDNN_VERBOSE="1", GLOG_minloglevel="2")
    result = subprocess.run([sys.executable, "-c", THREADS_PROBE, str(net)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r"runtime:OpenMP,nthr:(\d+)", result.stdout)
    assert found, result.stdout[-2000:]
    return int(found.group(1))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to tell thread counts apart")
def test_onednn_threads_follow_omp_and_blas_settings(write_file):
    net = write_file("net.prototxt", THREADS_NET)
    assert onednn_threads(net) == len(os.sched_getaffinity(0))
    assert onednn_threads(net, OPENBLAS_NUM_THREADS="1") == 1
    assert onednn_threads(net, MKL_NUM_THREADS="1") == 1
    assert onednn_threads(net, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="1") == 2
    assert onednn_threads(net, OMP_NUM_THREADS="1") == 1


EMPTY_BATCH_NET = """
force_backward: true
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 3 dim: 8 dim: 8 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 {engine} weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" relu_param {{ {engine} }} }}
layer {{ name: "max" type: "Pooling" bottom: "conv" top: "max"
        pooling_param {{ pool: MAX kernel_size: 2 stride: 2 {engine} }} }}
layer {{ name: "ave" type: "Pooling" bottom: "max" top: "ave"
        pooling_param {{ pool: AVE kernel_size: 2 stride: 2 {engine} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "ave" top: "ip"
        inner_product_param {{ num_output: 10 {engine} weight_filler {{ type: "xavier" }} }} }}
"""


@pytest.mark.parametrize("engine", [None, "ONEDNN", "CAFFE"])
def test_an_empty_batch_runs_every_layer_forward_and_backward(write_file, engine):
    net = caffe.Net(str(write_file("empty.prototxt", EMPTY_BATCH_NET.format(
        engine=engine_clause(engine)))), caffe.TRAIN)
    net.forward()    # a full batch first: the layers' primitives exist
    net.blobs["data"].reshape(0, 3, 8, 8)
    out = net.forward()
    assert out["ip"].shape == (0, 10)
    assert [net.blobs[b].data.shape for b in ("conv", "max", "ave")] == [
        (0, 4, 8, 8), (0, 4, 4, 4), (0, 4, 2, 2)]
    for name in ("conv", "ip"):
        for blob in net.params[name]:
            blob.diff[...] = 0
    net.backward()
    assert net.blobs["data"].diff.shape == (0, 3, 8, 8)
    for name in ("conv", "ip"):   # nothing to learn from no images
        for blob in net.params[name]:
            assert not blob.diff.any()
    net.blobs["data"].reshape(2, 3, 8, 8)   # and back to a batch
    net.blobs["data"].data[...] = 1
    assert net.forward()["ip"].shape == (2, 10)


# Both engines on the same weights and data, in a child process (the ISA
# level is read once, when oneDNN starts): every blob between the engine's
# layers, read fresh and through arrays held from before the first forward,
# after forward and backward; a blob the user writes before forwarding from
# the next layer; a smaller batch. Prints {engine: {what: values}} as JSON.
BLOBS_PROBE = """
import json, os, sys
import numpy as np
import caffe
caffe.set_mode_cpu()
BLOBS = ("conv1", "pool1", "conv2", "pool2", "ip1", "ip2")

def train_step(net, rng, batch, seen, key, held=None):
    net.blobs["data"].reshape(batch, 1, 12, 12)
    net.blobs["label"].reshape(batch)
    net.blobs["data"].data[...] = rng.normal(size=(batch, 1, 12, 12))
    net.blobs["label"].data[...] = np.arange(batch) % 4
    net.forward()
    net.backward()
    for b in BLOBS:
        seen[f"{key} {b} data"] = net.blobs[b].data.tolist()
        seen[f"{key} {b} diff"] = net.blobs[b].diff.tolist()
        if held:
            seen[f"{key} {b} held data"] = held[b][0].tolist()
            seen[f"{key} {b} held diff"] = held[b][1].tolist()

results = {}
for engine in ("default", "caffe"):
    os.environ["CAFFE_ENGINE"] = engine
    caffe.set_random_seed(5)
    net = caffe.Net(sys.argv[1], caffe.TRAIN)
    held = {b: (net.blobs[b].data, net.blobs[b].diff) for b in BLOBS}
    rng = np.random.default_rng(0)
    seen = {}
    for step in range(2):
        train_step(net, rng, 32, seen, step, held)
    net.blobs["pool1"].data[...] = rng.normal(size=net.blobs["pool1"].data.shape)
    net.forward(start="conv2")
    seen["written pool1, ip2"] = net.blobs["ip2"].data.tolist()
    train_step(net, rng, 7, seen, "batch 7")
    seen["batch 7 conv1 weights diff"] = net.params["conv1"][0].diff.tolist()
    results[engine] = seen
print(json.dumps(results))
"""


def run_both_engines(probe: str, net: Path, isa: str | None, *args: Path) -> tuple[dict, dict]:
    """A probe's results on the default engine and on Caffe's, at an ISA level."""
    env = dict(os.environ, GLOG_minloglevel="2", **({"ONEDNN_MAX_CPU_ISA": isa} if isa else {}))
    result = subprocess.run([sys.executable, "-c", probe, str(net), *map(str, args)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    both = json.loads(result.stdout.strip().splitlines()[-1])
    return both["default"], both["caffe"]


@pytest.mark.parametrize("isa", [None, "AVX2"], ids=["native", "AVX2"])
def test_blobs_between_engine_layers_equal_caffes_engine(write_file, isa):
    net = write_file("net.prototxt", NET.format(engine=""))
    default, own = run_both_engines(BLOBS_PROBE, net, isa)
    assert default.keys() == own.keys() and len(own) == 2 * 6 * 4 + 1 + 6 * 2 + 1
    for what, values in own.items():
        np.testing.assert_allclose(default[what], values, rtol=1e-4, atol=1e-5, err_msg=what)
    for step in range(2):   # a held array shows the newest values
        for b in ("conv1", "ip2"):
            assert default[f"{step} {b} held data"] == default[f"{step} {b} data"]
    assert default["0 ip2 data"] != default["1 ip2 data"]
    assert all(np.any(default[f"1 {b} diff"]) for b in ("conv1", "pool1", "ip1"))
    assert np.shape(default["batch 7 ip2 data"]) == (7, 4)


# A Python training loop over parameter arrays held from before the first
# forward (a custom optimiser), and one write through a held array between
# two forwards, on both engines in a child process. Prints
# {engine: {"losses": [...], "first": ..., "second": ...}} as JSON.
HELD_PARAMS_PROBE = """
import json, os, sys
import numpy as np
import caffe
caffe.set_mode_cpu()
rng = np.random.default_rng(0)
labels = np.arange(32) % 4
data = rng.normal(0, 0.3, (32, 1, 12, 12)).astype(np.float32)
for i, label in enumerate(labels):   # a bright quadrant per class
    row, col = divmod(int(label), 2)
    data[i, 0, row * 6:row * 6 + 6, col * 6:col * 6 + 6] += 1.0
results = {}
for engine in ("default", "caffe"):
    os.environ["CAFFE_ENGINE"] = engine
    caffe.set_random_seed(5)
    net = caffe.Net(sys.argv[1], caffe.TRAIN)
    held = [(blob.data, blob) for blobs in net.params.values() for blob in blobs]
    losses = []
    for _ in range(8):
        net.blobs["data"].data[...] = data
        net.blobs["label"].data[...] = labels
        net.clear_param_diffs()
        losses.append(float(net.forward()["loss"]))
        net.backward()
        for array, blob in held:
            array -= 0.05 * blob.diff
    weights = [net.params[name][0].data for name in ("conv2", "ip2")]
    net.forward()
    first = net.blobs["ip2"].data.copy()
    for array in weights:
        array[...] *= -2
    net.forward()
    second = net.blobs["ip2"].data.copy()
    results[engine] = {"losses": losses, "first": first.tolist(), "second": second.tolist()}
print(json.dumps(results))
"""


@pytest.mark.parametrize("isa", [None, "AVX2"], ids=["native", "AVX2"])
def test_writes_through_held_parameter_arrays_are_seen(write_file, isa):
    net = write_file("net.prototxt", NET.format(engine=""))
    # Only weights oneDNN keeps in a layout of its own can go stale.
    if not any(weight_reorders(run_reshapes(net, "batch", [32], isa)).values()):
        pytest.skip("oneDNN keeps every layer's weights in Caffe's layout at this level")
    default, own = run_both_engines(HELD_PARAMS_PROBE, net, isa)
    for what in ("losses", "first", "second"):
        np.testing.assert_allclose(default[what], own[what], rtol=1e-4, atol=1e-5, err_msg=what)
    assert default["losses"][-1] < 0.65 * default["losses"][0], default["losses"]  # it trains
    assert not np.allclose(default["first"], default["second"])


# Nets made in the main thread, then trained (forward + backward, three
# times) sequentially and in two Python threads at once; each primitive must
# run with a scratchpad the engine passes (oneDNN's own would tie it to one
# thread). Writes {"sequential": ..., "threaded": ...} to argv[2]: the
# verbose log of oneDNN goes to stdout.
THREADED_TRAINING_PROBE = """
import json, sys, threading
import numpy as np
import caffe
caffe.set_mode_cpu()

def make(seed):
    caffe.set_random_seed(5)
    net = caffe.Net(sys.argv[1], caffe.TRAIN)
    net.blobs["data"].data[...] = np.random.default_rng(seed).normal(size=(32, 1, 12, 12))
    net.blobs["label"].data[...] = np.arange(32) % 4
    return net

def train(net, results, key):
    for _ in range(3):
        net.clear_param_diffs()
        net.forward()
        net.backward()
    results[key] = {"loss": float(net.blobs["loss"].data),
                    "conv2 grad": net.params["conv2"][0].diff.tolist(),
                    "ip1 grad": net.params["ip1"][0].diff.tolist(),
                    "data grad": net.blobs["pool1"].diff.tolist()}

sequential, threaded = {}, {}
for i, net in enumerate([make(1), make(2)]):
    train(net, sequential, i)
nets = [make(1), make(2)]
threads = [threading.Thread(target=train, args=(net, threaded, i)) for i, net in enumerate(nets)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
with open(sys.argv[2], "w") as out:
    json.dump({"sequential": sequential, "threaded": threaded}, out)
"""


@pytest.mark.parametrize("isa", [None, "AVX2"], ids=["native", "AVX2"])
def test_nets_made_in_one_thread_train_in_two_others_at_once(write_file, tmp_path, isa):
    # Every layer names ONEDNN: each kind of primitive runs in the threads.
    net = write_file("net.prototxt", NET.format(engine="engine: ONEDNN"))
    env = dict(os.environ, GLOG_minloglevel="2", ONEDNN_VERBOSE="1", OMP_WAIT_POLICY="passive",
               **({"ONEDNN_MAX_CPU_ISA": isa} if isa else {}))
    report = tmp_path / "threads.json"
    result = subprocess.run([sys.executable, "-c", THREADED_TRAINING_PROBE, str(net), str(report)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = executed(result.stdout)
    assert {row[1] for row in rows} >= ENGINE_PRIMITIVES
    unmanaged = [row for row in rows if not any(f.startswith("attr-scratchpad:user") for f in row)]
    assert not unmanaged, unmanaged[:3]
    both = json.loads(report.read_text())
    for key in ("0", "1"):
        for what, values in both["sequential"][key].items():
            np.testing.assert_allclose(both["threaded"][key][what], values, rtol=1e-5, atol=1e-6,
                                       err_msg=f"net {key}: {what}")
    assert both["sequential"]["0"]["loss"] != both["sequential"]["1"]["loss"]


# Forwards at the batch sizes, or square input sizes, that argv names.
RESHAPE_PROBE = """
import sys
import numpy as np
import caffe
caffe.set_mode_cpu()
net = caffe.Net(sys.argv[1], caffe.TRAIN if sys.argv[2] == "batch" else caffe.TEST)
for value in map(int, sys.argv[3:]):
    if sys.argv[2] == "batch":
        net.blobs["data"].reshape(value, 1, 12, 12)
        net.blobs["label"].reshape(value)
        net.blobs["label"].data[...] = np.arange(value) % 4
    else:
        net.blobs["data"].reshape(2, 4, value, value)
    net.blobs["data"].data[...] = np.random.default_rng(value).normal(size=net.blobs["data"].data.shape)
    net.forward()
"""


def run_reshapes(net: Path, kind: str, values: list[int], isa: str | None = None, **env_extra: str):
    env = dict(os.environ, GLOG_minloglevel="0", ONEDNN_VERBOSE="1",
               **({"ONEDNN_MAX_CPU_ISA": isa} if isa else {}), **env_extra)
    result = subprocess.run([sys.executable, "-c", RESHAPE_PROBE, str(net), kind, *map(str, values)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def weight_reorders(result: subprocess.CompletedProcess) -> dict[str, int]:
    """How often each layer of NET had its weights reordered (ONEDNN_VERBOSE)."""
    reorders = [row[-2] for row in executed(result.stdout) if row[1] == "reorder"]
    weights = {"conv1": "8x1x3x3", "conv2": "2x8x4x3x3", "ip1": "32x144", "ip2": "4x32"}
    return {layer: reorders.count(dims) for layer, dims in weights.items()}


@pytest.mark.parametrize("isa", [None, "AVX2"], ids=["native", "AVX2"])
def test_alternating_batch_sizes_reorder_the_weights_once(write_file, isa):
    net = write_file("net.prototxt", NET.format(engine=""))
    once = weight_reorders(run_reshapes(net, "batch", [32], isa))
    if not any(once.values()):
        pytest.skip("oneDNN keeps every layer's weights in Caffe's layout at this level")
    assert max(once.values()) == 1, once
    assert weight_reorders(run_reshapes(net, "batch", [32, 7, 32, 7, 32], isa)) == once


# Three SGD steps of NET (argv[1]'s solver): each step changes the weights.
STEPS_PROBE = """
import sys
import numpy as np
import caffe
caffe.set_mode_cpu()
solver = caffe.SGDSolver(sys.argv[1])
rng = np.random.default_rng(0)
for _ in range(3):
    solver.net.blobs["data"].data[...] = rng.normal(size=(32, 1, 12, 12))
    solver.net.blobs["label"].data[...] = np.arange(32) % 4
    solver.step(1)
"""


def layout(descriptors: str, operand: str) -> str:
    """An operand's layout in an ONEDNN_VERBOSE line's memory descriptors
    ("wei_f32::blocked:ab::f0" in 3.2, "wei:f32::blocked:ab::f0" later)."""
    return re.search(operand + r"[_:]f32:\S*?:blocked:(\w+)", descriptors).group(1)


def test_a_training_step_copies_weights_once_where_forward_and_backward_agree(tmp_path):
    """The backward data reads the forward's copy of the weights where both
    want the same layout: one copy a layer per version of its weights."""
    if not cpu_has_avx512():
        pytest.skip("measured where oneDNN's AVX-512 inner products take the same layout both ways")
    net = tmp_path / "net.prototxt"
    net.write_text(NET.format(engine="engine: ONEDNN"))  # inner products too
    solver = tmp_path / "solver.prototxt"
    solver.write_text(SOLVER.format(net=net))
    env = dict(os.environ, ONEDNN_VERBOSE="1", GLOG_minloglevel="2")
    result = subprocess.run([sys.executable, "-c", STEPS_PROBE, str(solver)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = executed(result.stdout)
    shared = []
    for layer, kind, problem, dims in (("conv1", "convolution", "ic1oc8", "8x1x3x3"),
                                       ("conv2", "convolution", "g2ic8oc16", "2x8x4x3x3"),
                                       ("ip1", "inner_product", "ic144oc32", "32x144"),
                                       ("ip2", "inner_product", "ic32oc4", "4x32")):
        weights = {row[3]: layout(row[4], "wei") for row in rows
                   if row[1] == kind and problem in row[-2]}
        copies = [row for row in rows if row[1] == "reorder" and row[-2] == dims
                  and layout(row[4], "src") != layout(row[4], "dst")
                  and layout(row[4], "dst") == weights.get("forward_training")]
        if weights.get("forward_training") == weights.get("backward_data") and copies:
            shared.append(layer)
            assert len(copies) == 3, (layer, weights, len(copies))
    # (ip1 with oneDNN 3.2, ip2 with 3.12, whose ip1 takes Caffe's layout)
    assert shared, "no layer copied weights that its forward and backward share"


# AVE pooling with padding: at 6 x 6 its last window reaches past the
# padding (Caffe's code), at 7 x 7 it does not (oneDNN).
POOL_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 6 dim: 6 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
"""


@pytest.mark.skipif("pooling" in REFERENCE_ONLY,
                    reason="oneDNN has only reference pooling on this CPU: every shape runs Caffe's code")
def test_the_engine_a_shape_runs_on_does_not_depend_on_the_shapes_before(write_file):
    net = write_file("pool.prototxt", POOL_NET)
    alone = run_reshapes(net, "size", [7])
    after = run_reshapes(net, "size", [6, 7, 6, 7])
    pooled = [row for row in executed(after.stdout) if row[1] == "pooling"]
    assert len(pooled) == 2 and all(row[-2].startswith("mb2ic4_ih7oh4") for row in pooled), pooled
    assert sum(row[1] == "pooling" for row in executed(alone.stdout)) == 1
    # Each reason once, however often the shape comes back.
    assert after.stderr.count("Layer pool: runs on Caffe's engine, not oneDNN's: AVE pooling "
                              "whose last window reaches past the padding") == 1


# NaN and infinities in the input and a NaN weight, forward and backward, on
# both engines in a child process. Prints {engine: {blob: values}} as JSON.
NON_FINITE_PROBE = """
import json, os, sys
import numpy as np
import caffe
caffe.set_mode_cpu()
results = {}
for engine in ("default", "caffe"):
    os.environ["CAFFE_ENGINE"] = engine
    caffe.set_random_seed(5)
    net = caffe.Net(sys.argv[1], caffe.TRAIN)
    data = np.random.default_rng(0).normal(size=(32, 1, 12, 12)).astype(np.float32)
    data[0, 0, 0, 0], data[1, 0, 5, 5], data[2, 0, 7, 3] = np.nan, np.inf, -np.inf
    net.blobs["data"].data[...] = data
    net.blobs["label"].data[...] = np.arange(32) % 4
    net.params["conv2"][0].data[3, 0, 1, 1] = np.nan
    net.forward()
    net.backward()
    results[engine] = {f"{b} {which}": getattr(net.blobs[b], which).tolist()
                       for b in ("conv1", "pool1", "conv2", "pool2", "ip1", "ip2")
                       for which in ("data", "diff")}
print(json.dumps(results))
"""


@pytest.mark.parametrize("isa", [None, "AVX2"], ids=["native", "AVX2"])
def test_nan_and_infinities_give_what_caffes_engine_gives(write_file, isa):
    net = write_file("net.prototxt", NET.format(engine=""))
    default, own = run_both_engines(NON_FINITE_PROBE, net, isa)
    for what, values in own.items():
        expected = np.array(values, dtype=float)
        np.testing.assert_allclose(np.array(default[what], dtype=float), expected,
                                   rtol=1e-4, atol=1e-5, equal_nan=True, err_msg=what)
    # NaN reaches the output (a diverging net shows it), as with Caffe's code.
    assert np.isnan(np.array(default["ip2 data"], dtype=float)).any()


# A TEST net sharing the weights of a solver's TRAIN net (share_with), run
# after each solver step, on both engines in a child process.
SHARED_WEIGHTS_PROBE = """
import json, os, sys
import numpy as np
import caffe
caffe.set_mode_cpu()
data = np.random.default_rng(0).normal(size=(32, 1, 12, 12)).astype(np.float32)
results = {}
for engine in ("default", "caffe"):
    os.environ["CAFFE_ENGINE"] = engine
    caffe.set_random_seed(5)
    solver = caffe.SGDSolver(sys.argv[2])
    test = caffe.Net(sys.argv[1], caffe.TEST)
    test.share_with(solver.net)
    outputs = []
    for net in (solver.net, test):
        net.blobs["data"].data[...] = data
        net.blobs["label"].data[...] = np.arange(32) % 4
    for _ in range(3):
        test.forward()
        outputs.append(test.blobs["ip2"].data.tolist())
        solver.step(1)
    results[engine] = {"outputs": outputs}
print(json.dumps(results))
"""


def test_a_test_net_sharing_a_solvers_weights_sees_each_step(write_file, tmp_path):
    net = write_file("net.prototxt", NET.format(engine=""))
    solver = write_file("solver.prototxt", SOLVER.format(net=net))
    default, own = run_both_engines(SHARED_WEIGHTS_PROBE, net, None, solver)
    outputs = default["outputs"]
    np.testing.assert_allclose(outputs, own["outputs"], rtol=1e-4, atol=1e-5)
    assert outputs[0] != outputs[1] != outputs[2]  # each step's weights were used
