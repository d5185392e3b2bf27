"""Nets that never run a backward (deploy nets, a solver's TEST nets) on the oneDNN
engine: forward-only primitives, Convolution -> BatchNorm -> Scale -> ReLU chains
computed as one convolution, and every blob pycaffe can read holding what Caffe's
own code gives, whatever range a forward runs and whatever the user writes."""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import caffe
from conftest import REFERENCE_ONLY, cpu_has_avx512, on_onednn_here, run_caffe_tool
from test_cpu_engine import executed, is_reference, layout

# Two chains: conv1 (bias) -> bn1 -> sc1 (bias) -> relu1 (engine: ONEDNN, a
# post-op), and a depthwise conv2 (no bias) -> bn2 -> sc2 (no bias) -> relu2,
# whose forward is Caffe's (NaN stays NaN), so the chain ends at sc2.
DEPLOY = """
name: "chains"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 3 dim: 14 dim: 14 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1
          weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1"
        scale_param { bias_term: true filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { engine: ONEDNN negative_slope: 0.1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 16 group: 16 kernel_size: 3 pad: 1 bias_term: false
          weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" batch_norm_param { eps: 0.01 } }
layer { name: "sc2" type: "Scale" bottom: "conv2" top: "conv2" scale_param { filler { type: "gaussian" std: 1 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc" inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
"""

# Runs DEPLOY (argv[1]) with the weights argv[2] on both engines in a child
# process and prints {engine: {what: values}} as JSON: whole forwards, forwards
# that stop or start inside a chain, and forwards after writes to BatchNorm's and
# Scale's parameters through arrays held from before, and through copy_from.
PROBE = """
import json, os, sys
import numpy as np
import caffe
caffe.set_mode_cpu()
data = np.random.default_rng(3).standard_normal((3, 3, 14, 14)).astype(np.float32)
results = {}
for engine in ("default", "caffe"):
    os.environ["CAFFE_ENGINE"] = engine
    net = caffe.Net(sys.argv[1], caffe.TEST, weights=sys.argv[2])
    seen = {}
    def keep(what):
        seen[what] = {b: net.blobs[b].data.tolist() for b in ("conv1", "pool1", "conv2", "fc")}
    net.blobs["data"].data[...] = data
    net.forward()
    keep("forward")
    for end in ("conv1", "bn1", "sc1", "bn2", "sc2"):
        net.forward(end=end)
        keep("end " + end)
    net.forward(end="relu1")
    net.forward(start="pool1", end="conv2")
    net.forward(start="bn2")
    keep("in steps")
    mean, variance = net.params["bn1"][0].data, net.params["bn2"][1].data
    gamma = net.params["sc1"][0].data
    for step in range(2):
        mean += 0.5
        variance *= 2
        gamma[3] = -1.5 - step
        net.forward()
        keep(f"written {step}")
    del mean, variance, gamma
    net.forward()
    keep("arrays dropped")
    net.copy_from(sys.argv[2])
    net.forward()
    keep("copy_from")
    results[engine] = seen
print(json.dumps(results))
"""


def child(*args: str, isa: str | None = None, **env_extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, GLOG_minloglevel="0", **env_extra,
               **({"ONEDNN_MAX_CPU_ISA": isa} if isa else {}))
    result = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture
def deploy(write_file, tmp_path):
    """The deploy net and weights with BatchNorm statistics a net would learn
    (Caffe's fillers leave them 0)."""
    net_path = write_file("deploy.prototxt", DEPLOY)
    os.environ.pop("CAFFE_ENGINE", None)
    net = caffe.Net(str(net_path), caffe.TEST)
    rng = np.random.default_rng(7)
    for bn in ("bn1", "bn2"):
        mean, variance, factor = net.params[bn]
        mean.data[...] = rng.standard_normal(mean.data.shape) * 5
        variance.data[...] = rng.random(variance.data.shape) * 8 + 0.5
        factor.data[...] = 2.0   # Caffe keeps sums weighted by this factor
    weights = tmp_path / "deploy.caffemodel"
    net.save(str(weights))
    return net_path, weights


@pytest.mark.parametrize("isa", [None, "AVX2"], ids=["native", "AVX2"])
def test_deploy_chains_run_as_one_convolution_with_caffes_values(deploy, isa):
    net_path, weights = deploy
    result = child("-c", PROBE, str(net_path), str(weights), isa=isa, ONEDNN_VERBOSE="1")
    both = json.loads(result.stdout.strip().splitlines()[-1])
    default, own = both["default"], both["caffe"]
    assert default.keys() == own.keys() and len(own) == 11
    for what, blobs in own.items():
        for blob, values in blobs.items():
            np.testing.assert_allclose(default[what][blob], values, rtol=1e-4, atol=1e-4,
                                       err_msg=f"{what}: {blob}")
    # Each write and copy_from changed what the net computes.
    for before, after in [("forward", "written 0"), ("written 0", "written 1"),
                          ("arrays dropped", "copy_from")]:
        assert default[before]["fc"] != default[after]["fc"], (before, after)
    assert "conv1 computes the next 3 layer(s) in its forward" in result.stderr
    assert "conv2 computes the next 2 layer(s) in its forward" in result.stderr
    # Forward-only primitives; the fused conv1 with its ReLU as a post-op; the
    # depthwise conv2 on oneDNN at this level too (its training rule is about
    # a backward that never runs here); no MAX pooling workspace.
    rows = executed(result.stdout)
    if "convolution" in REFERENCE_ONLY:  # Caffe's code computes the chains (values above)
        return
    convolutions = [row for row in rows if row[1] == "convolution"]
    assert convolutions and {row[3] for row in convolutions} == {"forward_inference"}
    assert not any(row[2].startswith(("ref", "simple")) for row in convolutions)
    assert any("post-ops" in ",".join(row) and "eltwise_relu" in ",".join(row)
               for row in convolutions)
    # The depthwise conv2 runs oneDNN's depthwise kernel on channels in blocks
    # of 16 (AVX-512) or 8, not in the channels-last layout oneDNN would pick.
    depthwise = [row for row in convolutions if ",g16" in ",".join(row) or "g16" in row[-2]]
    block = "aBcd16b" if isa is None and cpu_has_avx512() else "aBcd8b"
    assert depthwise and all(row[2].startswith("jit_dw") and f":{block}:" in row[4]
                             for row in depthwise), [row[2:5] for row in depthwise]
    pooling = [row for row in rows if row[1] == "pooling"]
    assert bool(pooling) == ("pooling" not in REFERENCE_ONLY), pooling
    assert {row[3] for row in pooling} <= {"forward_inference"}
    # (oneDNN 3.2 names the missing workspace ws_undef; later versions omit it)
    assert not [field for row in pooling for field in ",".join(row).replace(",", " ").split()
                if field.startswith("ws_") and not field.startswith("ws_undef")]


def test_a_net_that_trains_fuses_nothing(deploy):
    net_path, weights = deploy
    train = net_path.with_name("train.prototxt")
    train.write_text(net_path.read_text() + 'layer { name: "loss" type: "EuclideanLoss" bottom: "fc" bottom: "fc" '
                            'top: "loss" }\n')
    probe = ("import caffe, sys; caffe.set_mode_cpu(); "
             "net = caffe.Net(sys.argv[1], caffe.TEST, weights=sys.argv[2]); net.forward()")
    trained = child("-c", probe, str(train), str(weights))
    assert "computes the next" not in trained.stderr
    deployed = child("-c", probe, str(net_path), str(weights))
    assert "computes the next" in deployed.stderr


def test_a_nan_input_stays_nan_through_fused_chains_as_with_caffes_engine(deploy, monkeypatch):
    net_path, weights = deploy
    # Both ReLUs name no engine here: their forward is Caffe's (oneDNN's, the
    # post-op of a relu1 that names ONEDNN, gives 0 for NaN).
    net_path.write_text(DEPLOY.replace("engine: ONEDNN ", ""))
    data = np.random.default_rng(4).standard_normal((3, 3, 14, 14)).astype(np.float32)
    data[1, 0, 7, 7] = np.nan
    outputs = {}
    for engine in ("default", "caffe"):
        monkeypatch.setenv("CAFFE_ENGINE", engine)
        net = caffe.Net(str(net_path), caffe.TEST, weights=str(weights))
        net.blobs["data"].data[...] = data
        net.forward()
        outputs[engine] = {b: net.blobs[b].data.copy() for b in ("conv1", "pool1")}
    # conv1 holds the fused chain's result. (Beyond pool1, windows that were
    # all NaN hold Caffe's -FLT_MAX, whose sums overflow in an order each
    # engine picks.)
    assert np.isnan(outputs["caffe"]["conv1"]).sum() >= 9   # a 3x3 kernel's reach
    for blob, values in outputs["caffe"].items():
        np.testing.assert_allclose(outputs["default"][blob], values, rtol=1e-4, atol=1e-4,
                                   err_msg=blob)   # NaN where Caffe's has NaN
    assert (outputs["default"]["pool1"] == -np.finfo(np.float32).max).any()


def test_caffe_time_runs_a_fused_deploy_net_layer_by_layer(deploy):
    net_path, weights = deploy
    result = run_caffe_tool("time", "-model", str(net_path), "-weights", str(weights),
                            "-iterations", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    # Each layer timed alone, forward and backward (Caffe's backward where the
    # net itself never runs one).
    for layer in ("conv1", "bn1", "sc1", "relu1", "pool1", "conv2", "sc2", "fc"):
        for which in ("forward", "backward"):
            assert re.search(rf" {layer}\t{which}: [0-9.]+ ms", result.stderr), (layer, which)
    assert "Average Forward-Backward:" in result.stderr


# A layer that names engine CAFFE, as MobileNet files do for their depthwise
# convolutions (to keep them off cuDNN), on the default engine and with
# CAFFE_ENGINE=onednn.
NAMES_CAFFE = """
name: "names_caffe"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 8 dim: 10 dim: 10 } } }
layer { name: "dw" type: "Convolution" bottom: "data" top: "dw"
        convolution_param { num_output: 8 group: 8 kernel_size: 3 pad: 1 engine: CAFFE
          weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "pool" type: "Pooling" bottom: "dw" top: "pool" pooling_param { pool: AVE kernel_size: 2 stride: 2 engine: CAFFE } }
"""

FORWARD = """
import json, sys
import numpy as np
import caffe
caffe.set_mode_cpu()
caffe.set_random_seed(1)
net = caffe.Net(sys.argv[1], caffe.TEST)
net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal((2, 8, 10, 10))
print(json.dumps(net.forward()["pool"].tolist()))
"""


def test_caffe_engine_onednn_runs_layers_that_name_caffe_on_onednn(write_file):
    net = write_file("net.prototxt", NAMES_CAFFE)
    as_named = child("-c", FORWARD, str(net), ONEDNN_VERBOSE="1")
    assert not [row for row in executed(as_named.stdout) if row[1] in ("convolution", "pooling")]
    # Said once however many layers name CAFFE (dw and pool here).
    assert as_named.stderr.count("names engine CAFFE") == 1
    assert ("Layer dw names engine CAFFE and runs Caffe's own code, as do the others that name "
            "it; CAFFE_ENGINE=onednn runs them on oneDNN's engine") in as_named.stderr
    onednn = child("-c", FORWARD, str(net), ONEDNN_VERBOSE="1", CAFFE_ENGINE="onednn")
    assert {row[1] for row in executed(onednn.stdout)} >= on_onednn_here({"convolution", "pooling"})
    for layer in ("dw", "pool"):
        assert f"Layer {layer} names engine CAFFE and runs oneDNN's (CAFFE_ENGINE=onednn)" \
            in onednn.stderr
    np.testing.assert_allclose(json.loads(onednn.stdout.strip().splitlines()[-1]),
                               json.loads(as_named.stdout.strip().splitlines()[-1]),
                               rtol=1e-4, atol=1e-5)


# Two inner products (fc2's weights kept transposed), at one row, four rows and
# one row again, on both engines; a held weights array is written after each
# forward. Prints {engine: [fc2 after each forward]} as JSON.
ROWS_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 96 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1"
        inner_product_param { num_output: 64 weight_filler { type: "gaussian" std: 0.1 }
                              bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
        inner_product_param { num_output: 24 transpose: true bias_term: false
                              weight_filler { type: "gaussian" std: 0.1 } } }
"""
ROWS_PROBE = """
import json, os, sys
import numpy as np
import caffe
caffe.set_mode_cpu()
results = {}
for engine in ("default", "caffe"):
    os.environ["CAFFE_ENGINE"] = engine
    caffe.set_random_seed(1)
    net = caffe.Net(sys.argv[1], caffe.TEST)
    weights = net.params["fc1"][0].data
    rng = np.random.default_rng(4)
    seen = []
    for rows in (1, 4, 1):
        net.blobs["data"].reshape(rows, 96)
        net.blobs["data"].data[...] = rng.standard_normal((rows, 96))
        net.forward()
        seen.append(net.blobs["fc2"].data.tolist())
        weights[5] *= -2
    results[engine] = seen
print(json.dumps(results))
"""


@pytest.mark.parametrize("isa", [None, "AVX2"], ids=["native", "AVX2"])
def test_one_row_inner_products_read_caffes_weights_without_a_copy(write_file, isa):
    net = write_file("rows.prototxt", ROWS_NET)
    result = child("-c", ROWS_PROBE, str(net), isa=isa, ONEDNN_VERBOSE="1")
    both = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(both["default"]) == len(both["caffe"]) == 3
    for default, own in zip(both["default"], both["caffe"]):
        np.testing.assert_allclose(default, own, rtol=1e-5, atol=1e-6)
    if platform.machine() not in ("x86_64", "AMD64"):
        return  # ARM's oneDNN has only its reference GEMM for Caffe's layout: its own choice there
    rows = executed(result.stdout)
    one_row = [i for i, row in enumerate(rows) if row[1] == "inner_product" and row[-2].startswith("mb1")]
    four = [i for i, row in enumerate(rows) if row[1] == "inner_product" and row[-2].startswith("mb4")]
    assert len(one_row) == 4 and len(four) == 2, [rows[i][1:3] + rows[i][-2:-1] for i in one_row + four]
    # One row: oneDNN's code on the weights where Caffe keeps them (fc2's
    # transposed), no copy of them; the four-row forward in between may copy.
    for i in one_row:
        expected = "ab" if "oc64" in rows[i][-2] else "ba"
        assert layout(rows[i][4], "wei") == expected and not is_reference(rows[i][2]), rows[i]
    weight_dims = {"64x96", "24x64"}
    copies = [i for i, row in enumerate(rows) if row[1] == "reorder" and row[-2] in weight_dims]
    assert all(four[0] - 2 <= i < four[-1] for i in copies), (copies, one_row, four)
