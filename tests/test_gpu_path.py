"""The GPU path of Python layers, in what runs without a GPU.

A layer's forward_gpu/backward_gpu (patch 0023), blobs' GPU memory and their
SyncedMemory heads (patch 0024), and caffe_pylayer's fallback to the CPU when
CuPy is missing. The GPU itself is exercised in test_gpu.py.
"""
import logging
import sys

import numpy as np
import pytest

import caffe
from caffe_pylayer import gpu

NET = """
force_backward: true
layer { name: "data" type: "DummyData" top: "a" top: "b"
        dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 3 }
                           data_filler { type: "gaussian" } data_filler { type: "gaussian" } } }
layer { name: "loss" type: "Python" bottom: "a" bottom: "b" top: "loss"
        python_param { module: "pyloss" layer: "EuclideanLossLayer" } loss_weight: 2 }
"""


@pytest.fixture
def net(write_file):
    return caffe.Net(str(write_file("net.prototxt", NET)), caffe.TRAIN)


@pytest.fixture
def without_cupy(monkeypatch):
    """Make `import cupy` fail, and forget what caffe_pylayer.gpu found before."""
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(gpu, "_cupy", None)
    monkeypatch.setattr(gpu, "_cupy_missing", None)


def test_blob_heads_name_where_the_current_copy_is(net):
    blob = net.blobs["a"]
    net.forward()
    assert blob._data_head == "cpu"        # DummyData wrote it on the host
    blob.diff[...] = 1.0
    assert blob._diff_head == "cpu"


@pytest.mark.skipif(hasattr(caffe._caffe.Blob, "_gpu_data_ptr"),
                    reason="a CUDA build has GPU memory (test_gpu.py covers it)")
def test_gpu_memory_of_a_cpu_only_build_raises_a_clear_error(net):
    with pytest.raises(RuntimeError, match="CPU-only build"):
        net.blobs["a"].gpu_data.__cuda_array_interface__


def test_gpu_methods_without_cupy_run_the_cpu_path(net, without_cupy):
    layer = net.layer_dict["loss"]
    bottom, top = [net.blobs["a"], net.blobs["b"]], [net.blobs["loss"]]
    expected = float(net.forward()["loss"])
    net.blobs["loss"].data[...] = 0
    layer.forward_gpu(bottom, top)
    assert float(net.blobs["loss"].data) == pytest.approx(expected, rel=1e-6)
    top[0].diff[...] = 2.0  # the loss_weight, as Caffe sets it
    layer.backward_gpu(top, [True, True], bottom)
    a, b = net.blobs["a"].data, net.blobs["b"].data
    np.testing.assert_allclose(bottom[0].diff, 2.0 * (a - b) / 4, rtol=1e-6)
    np.testing.assert_allclose(bottom[1].diff, -2.0 * (a - b) / 4, rtol=1e-6)


def test_missing_cupy_is_logged_once_naming_the_layer(net, without_cupy, caplog):
    layer = net.layer_dict["loss"]
    bottom, top = [net.blobs["a"], net.blobs["b"]], [net.blobs["loss"]]
    with caplog.at_level(logging.WARNING, logger="caffe_pylayer"):
        for _ in range(3):
            layer.forward_gpu(bottom, top)
    messages = [r.getMessage() for r in caplog.records if r.name == "caffe_pylayer"]
    assert len(messages) == 1, messages
    assert "CuPy is unavailable" in messages[0] and "EuclideanLossLayer 'loss'" in messages[0]
