"""Python layers are freed with their net, retry a failed reshape, and read
their phase and rank as layer code written for Caffe's forks expects."""
import gc
import json
import re
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import pytest

import caffe
from caffe_pylayer import GradientCheckError, check_gradients
from conftest import LAYERS_DIR

LOSS_NET = """
    layer { name: "data" type: "Input" top: "pred" top: "label"
            input_param { shape { dim: 64 dim: 256 } shape { dim: 64 dim: 256 } } }
    layer { name: "loss" bottom: "pred" bottom: "label" top: "loss" loss_weight: 1 %s }
"""
PYTHON_LOSS = "type: 'Python' python_param { module: 'pyloss' layer: 'EuclideanLossLayer' }"
BUILTIN_LOSS = "type: 'EuclideanLoss'"


def one_layer_net(write_file, layer, param_str="", shape=(2, 3), phase=caffe.TRAIN):
    dims = " ".join(f"dim: {d}" for d in shape)
    path = write_file(f"{layer}.prototxt", f"""
        force_backward: true
        layer {{ name: "data" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}
        layer {{ name: "probe" type: "Python" bottom: "x" top: "y"
                python_param {{ module: "lifetime_layers" layer: "{layer}"
                               param_str: "{param_str}" }} }}
    """)
    return caffe.Net(str(path), phase)


@pytest.fixture(autouse=True)
def layers_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(LAYERS_DIR))


def test_deleting_a_net_frees_its_python_layer(write_file):
    net = caffe.Net(str(write_file("loss.prototxt", LOSS_NET % PYTHON_LOSS)), caffe.TRAIN)
    net.forward()
    layer = weakref.ref(net.layers[1])
    assert layer() is not None
    del net
    gc.collect()
    assert layer() is None


def run_isolated(code: str) -> str:
    """Run code in a fresh interpreter (RSS measured without pytest's own)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, cwd=LAYERS_DIR,
                          env={"GLOG_minloglevel": "2", "PYTHONPATH": str(LAYERS_DIR),
                               "OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


RSS = """
    import gc, json, tempfile, caffe
    def rss_mib():
        return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
    def growth(text, build, times=200):
        path = tempfile.NamedTemporaryFile('w', suffix='.prototxt', delete=False)
        path.write(text)
        path.close()
        for _ in range(20):  # let allocator and caches settle first
            build(path.name)
        gc.collect()
        before = rss_mib()
        for _ in range(times):
            build(path.name)
        gc.collect()
        return rss_mib() - before
"""


def test_rebuilding_a_net_with_a_python_layer_does_not_grow_the_process():
    out = run_isolated(RSS + f"""
    def build(path):
        net = caffe.Net(path, caffe.TRAIN)
        net.forward()
        net.backward()
    builtin = growth({LOSS_NET % BUILTIN_LOSS!r}, build)
    python = growth({LOSS_NET % PYTHON_LOSS!r}, build)
    print(json.dumps({{"builtin": builtin, "python": python}}))
    """)
    grown = json.loads(out.splitlines()[-1])
    # Before the fix: about 50 MiB (the layer and its 64 KiB buffer, per net).
    assert grown["python"] <= grown["builtin"] + 2, grown


def test_a_layer_whose_setup_raises_is_freed_each_time():
    out = run_isolated(RSS + """
    def build(path):
        try:
            caffe.Net(path, caffe.TRAIN)
        except ValueError as error:
            assert "deliberate failure in setup" in str(error), error
        else:
            raise AssertionError("setup did not raise")
    text = '''layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 } } }
              layer { name: "bad" type: "Python" bottom: "x" top: "y"
                      python_param { module: "lifetime_layers" layer: "RaisingSetupLayer" } }'''
    print(json.dumps({"grown": growth(text, build, times=100)}))
    """)
    # Each failed layer kept 1 MiB: 100 MiB if they leaked. The interpreter then exits cleanly.
    assert json.loads(out.splitlines()[-1])["grown"] <= 2


def test_a_layer_that_keeps_its_bottoms_still_works(write_file):
    net = one_layer_net(write_file, "KeepsBottomsLayer")
    for value in (1.0, 2.5):
        net.blobs["x"].data[...] = value
        np.testing.assert_array_equal(net.forward()["y"], np.full((2, 3), value))
    layer = weakref.ref(net.layers[1])
    del net
    gc.collect()
    assert layer() is None


def test_a_reshape_that_raised_runs_again_on_the_next_forward(write_file):
    from lifetime_layers import PickyReshapeLayer
    net = one_layer_net(write_file, "PickyReshapeLayer")
    net.blobs["x"].reshape(4, 5)
    PickyReshapeLayer.refuse = True
    with pytest.raises(ValueError, match=r"PickyReshapeLayer 'probe': refuses shape \(4, 5\)"):
        net.forward()
    with pytest.raises(ValueError, match=r"refuses shape \(4, 5\)"):  # not skipped as done
        net.forward()
    PickyReshapeLayer.refuse = False
    calls = PickyReshapeLayer.reshapes
    net.blobs["x"].data[...] = 7.0
    np.testing.assert_array_equal(net.forward()["y"], np.full((4, 5), 7.0))
    net.forward()  # same shapes: skipped now that it succeeded
    assert PickyReshapeLayer.reshapes == calls + 1


@pytest.mark.parametrize("phase, name, scale", [(caffe.TRAIN, "TRAIN", 2.0), (caffe.TEST, "TEST", 3.0)])
def test_phase_reads_as_its_name_and_compares_as_a_number(write_file, phase, name, scale):
    net = one_layer_net(write_file, "ConfigByPhaseLayer", phase=phase)
    layer = net.layers[1]
    assert layer.seen == {"str": name, "int": int(phase), "is_train": phase == caffe.TRAIN,
                          "is_test": phase == caffe.TEST, "indexed": name.lower(),
                          "rank": 0, "world_size": 1}
    assert layer.phase == phase and f"{layer.phase}" == name and f"{layer.phase:d}" == str(phase)
    assert {caffe.TRAIN: "a", caffe.TEST: "b"}[layer.phase] == "ab"[phase]
    net.blobs["x"].data[...] = 1.0
    np.testing.assert_array_equal(net.forward()["y"], np.full((2, 3), scale))


def test_rank_and_world_size_follow_the_solver_count(write_file):
    caffe.set_solver_count(4)
    caffe.set_solver_rank(3)
    caffe.set_multiprocess(True)  # as caffe-train's ranks say; else Caffe refuses Python layers
    try:
        net = one_layer_net(write_file, "ConfigByPhaseLayer")
    finally:
        caffe.set_solver_count(1)
        caffe.set_solver_rank(0)
        caffe.set_multiprocess(False)
    assert (net.layers[1].rank, net.layers[1].world_size) == (3, 4)


def test_check_gradients_covers_parameter_blobs(write_file):
    net = one_layer_net(write_file, "AffineLayer", shape=(3, 4, 2))
    net.blobs["x"].data[...] = np.random.default_rng(5).standard_normal((3, 4, 2))
    report = check_gradients(net, "probe")
    assert report.params_checked == 8             # w and b, 4 channels each
    assert report.checked == 3 * 4 * 2 + 8
    assert report.max_scaled_error < 1e-3


def test_check_gradients_catches_a_wrong_parameter_gradient(write_file):
    net = one_layer_net(write_file, "AffineLayer", param_str="wrong_weight_gradient: true",
                        shape=(3, 4))
    net.blobs["x"].data[...] = np.random.default_rng(6).standard_normal((3, 4))
    with pytest.raises(GradientCheckError, match=r"layer 'probe', parameter blob 0, value \d+"):
        check_gradients(net, "probe")


def test_protobuf_runtime_is_not_older_than_the_generated_code():
    from google import protobuf
    from caffe.proto import caffe_pb2
    source = open(caffe_pb2.__file__).read()
    # protoc 22+ writes the version it generated for; 3.20-3.21 use the
    # builder module that runtimes from 3.20 on have.
    stated = re.search(r"^# Protobuf Python Version: ([0-9.]+)", source, re.MULTILINE)
    needed = stated.group(1) if stated else "3.20"
    as_tuple = lambda v: tuple(int(p) for p in re.findall(r"\d+", v)[:3])  # noqa: E731
    assert as_tuple(protobuf.__version__) >= as_tuple(needed), (protobuf.__version__, needed)
