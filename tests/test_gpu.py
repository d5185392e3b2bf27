"""GPU mode: the Python layer, cuDNN and the solver on a real GPU.

Every test here skips, with the reason, unless the caffe tool beside this
interpreter is a CUDA build and sees a GPU (see conftest.gpu_count).
"""

import numpy as np
import pytest

import caffe
from caffe import layers as L
from conftest import LAYERS_DIR, requires_gpu, run_caffe_tool, training_losses

pytestmark = requires_gpu()


@pytest.fixture
def gpu_mode():
    caffe.set_device(0)
    caffe.set_mode_gpu()
    yield
    caffe.set_mode_cpu()


def mlp_with_python_loss(write_file, batch=16, dim=32):
    n = caffe.NetSpec()
    n.x, n.label = L.Input(shape=[dict(dim=[batch, dim]), dict(dim=[batch, 4])], ntop=2)
    n.h = L.InnerProduct(n.x, num_output=24, weight_filler=dict(type="gaussian", std=0.1))
    n.pred = L.InnerProduct(n.h, num_output=4, weight_filler=dict(type="gaussian", std=0.1))
    n.loss = L.Python(n.pred, n.label, module="pyloss", layer="EuclideanLossLayer",
                      loss_weight=2.0)
    proto = n.to_proto()
    proto.force_backward = True
    return write_file("mlp.prototxt", str(proto))


def needs_cupy():
    return pytest.importorskip("cupy", reason="the GPU path of caffe_pylayer's layers uses CuPy")


def run_net(path, mode, weights_from=None, seed=0):
    """Forward and backward once in CPU or GPU mode; returns loss, diffs and the net."""
    (caffe.set_mode_gpu if mode == "gpu" else caffe.set_mode_cpu)()
    net = caffe.Net(str(path), caffe.TRAIN)
    if weights_from is not None:
        for name, params in weights_from.params.items():
            for ours, theirs in zip(net.params[name], params):
                ours.data[...] = theirs.data
    rng = np.random.default_rng(seed)
    for name in net.inputs:
        net.blobs[name].data[...] = rng.standard_normal(net.blobs[name].data.shape)
    loss = float(np.asarray(net.forward()[net.outputs[0]]).reshape(-1)[0])
    net.backward()
    diffs = {name: [p.diff.copy() for p in params] for name, params in net.params.items()}
    return loss, diffs, net


def test_blob_exposes_its_gpu_pointer(write_file, gpu_mode):
    _, _, net = run_net(mlp_with_python_loss(write_file), "gpu")
    assert net.blobs["x"]._gpu_data_ptr != 0


def test_python_layer_gives_the_same_loss_and_gradients_in_gpu_mode(write_file, gpu_mode):
    path = mlp_with_python_loss(write_file)
    cpu_loss, cpu_diffs, cpu_net = run_net(path, "cpu")
    gpu_loss, gpu_diffs, _ = run_net(path, "gpu", weights_from=cpu_net)
    # cuBLAS and OpenBLAS sum in different orders: float32 agreement to ~1e-5.
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-5)
    for name in cpu_diffs:
        for cpu, gpu in zip(cpu_diffs[name], gpu_diffs[name]):
            np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-6)


def test_cudnn_convolution_net_matches_the_cpu_net(write_file, gpu_mode):
    n = caffe.NetSpec()
    n.x, n.label = L.Input(shape=[dict(dim=[4, 3, 16, 16]), dict(dim=[4, 8, 8, 8])], ntop=2)
    n.conv = L.Convolution(n.x, num_output=8, kernel_size=3, stride=2, pad=1,
                           weight_filler=dict(type="gaussian", std=0.1),
                           bias_filler=dict(type="constant", value=0.1))  # engine: CUDNN in GPU mode
    n.relu = L.ReLU(n.conv, in_place=True)
    n.pool = L.Pooling(n.conv, kernel_size=3, stride=1, pad=1, pool=caffe.params.Pooling.MAX)
    n.loss = L.Python(n.pool, n.label, module="pyloss", layer="EuclideanLossLayer",
                      loss_weight=1.0)
    proto = n.to_proto()
    proto.force_backward = True
    path = write_file("conv.prototxt", str(proto))
    cpu_loss, cpu_diffs, cpu_net = run_net(path, "cpu")
    gpu_loss, gpu_diffs, gpu_net = run_net(path, "gpu", weights_from=cpu_net)
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-4)
    np.testing.assert_allclose(gpu_net.blobs["conv"].data, cpu_net.blobs["conv"].data,
                               rtol=1e-4, atol=1e-5)
    for cpu, gpu in zip(cpu_diffs["conv"], gpu_diffs["conv"]):
        np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-5)


def test_sgd_solver_trains_on_the_gpu(write_file, tmp_path, gpu_mode):
    net = mlp_with_python_loss(write_file, batch=64, dim=8)
    solver_path = write_file("solver.prototxt", f"""
        net: "{net}"
        base_lr: 0.02
        momentum: 0.9
        lr_policy: "fixed"
        max_iter: 400
        solver_mode: GPU
        random_seed: 3
        snapshot_prefix: "{tmp_path / 'snap'}"
    """)
    solver = caffe.SGDSolver(str(solver_path))
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    solver.net.blobs["x"].data[...] = x
    solver.net.blobs["label"].data[...] = x[:, :4] * 0.5 - x[:, 4:] * 0.25
    first = float(solver.net.forward()["loss"])
    solver.step(400)
    last = float(solver.net.forward()["loss"])
    assert first / last >= 10, (first, last)


def test_gpu_path_keeps_the_bottoms_on_the_device(write_file, gpu_mode):
    needs_cupy()
    _, _, net = run_net(mlp_with_python_loss(write_file), "gpu")
    net.forward()
    net.backward()
    # "cpu" or "synced" would mean Caffe copied the blob to the host for the layer.
    assert (net.blobs["pred"]._data_head, net.blobs["pred"]._diff_head) == ("gpu", "gpu")
    assert net.blobs["label"]._data_head == "gpu"


def test_cpu_path_copies_the_bottoms_to_the_host(write_file, gpu_mode, monkeypatch):
    # The same net with Caffe's classic Python loss, which has no GPU methods.
    monkeypatch.syspath_prepend(str(LAYERS_DIR))
    path = mlp_with_python_loss(write_file)
    path.write_text(path.read_text().replace('"pyloss"', '"probe_layers"')
                    .replace('"EuclideanLossLayer"', '"ClassicEuclideanLossLayer"'))
    _, _, net = run_net(path, "gpu")
    net.forward()
    # The layer read blob.data (mutable_cpu_data): the host copy is now the
    # current one, and the next GPU use copies it back to the device.
    assert net.blobs["pred"]._data_head == "cpu"


def test_gpu_views_write_caffe_memory_in_place(write_file, gpu_mode):
    cupy = needs_cupy()
    _, _, net = run_net(mlp_with_python_loss(write_file), "gpu")
    blob = net.blobs["pred"]
    view = cupy.asarray(blob.gpu_data)
    assert view.shape == tuple(blob.shape) and view.dtype == cupy.float32
    view[...] = 3.5
    np.testing.assert_array_equal(blob.data, np.full(blob.shape, 3.5, dtype=np.float32))


def test_caffe_train_tool_trains_a_gpu_python_loss(write_file, tmp_path):
    needs_cupy()
    net = write_file("net.prototxt", """
        layer { name: "data" type: "DummyData" top: "x" top: "y"
                dummy_data_param { shape { dim: 64 dim: 8 } shape { dim: 64 dim: 2 }
                                   data_filler { type: "constant" value: 1 }
                                   data_filler { type: "constant" value: 0.5 } } }
        layer { name: "fc" type: "InnerProduct" bottom: "x" top: "pred"
                inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
        layer { type: "Python" name: "loss" bottom: "pred" bottom: "y" top: "loss"
                python_param { module: "pyloss" layer: "EuclideanLossLayer" } loss_weight: 1 }
    """)
    solver = write_file("solver.prototxt", f"""
        net: "{net}"
        base_lr: 0.01
        lr_policy: "fixed"
        max_iter: 200
        display: 20
        solver_mode: GPU
        snapshot_prefix: "{tmp_path / 'snap'}"
    """)
    result = run_caffe_tool("train", "-solver", str(solver), "-gpu", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "caffe_pylayer: CuPy is unavailable" not in result.stderr
    losses = training_losses(result)
    assert len(losses) >= 5
    assert losses[-1] <= losses[0] / 10, losses


def test_the_readme_gpu_layer_runs_on_the_device(write_file, gpu_mode, monkeypatch):
    needs_cupy()
    monkeypatch.syspath_prepend(str(LAYERS_DIR))
    n = caffe.NetSpec()
    n.x, n.label = L.Input(shape=[dict(dim=[8, 5]), dict(dim=[8, 5])], ntop=2)
    n.scaled = L.Python(n.x, module="gpu_layers", layer="ScaleLayer")
    n.loss = L.Python(n.scaled, n.label, module="pyloss", layer="EuclideanLossLayer", loss_weight=1)
    proto = n.to_proto()
    proto.force_backward = True
    path = write_file("scale.prototxt", str(proto))
    cpu_loss, _, cpu_net = run_net(path, "cpu")
    gpu_loss, _, gpu_net = run_net(path, "gpu")
    assert gpu_net.blobs["scaled"]._data_head == "gpu"
    np.testing.assert_allclose(gpu_net.blobs["scaled"].data, 2 * gpu_net.blobs["x"].data, rtol=1e-6)
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-5)
    np.testing.assert_allclose(gpu_net.blobs["x"].diff, cpu_net.blobs["x"].diff, rtol=1e-5, atol=1e-7)
