"""Solvers train nets whose loss is the Python layer; memory stays flat."""
import re

import numpy as np
import pytest

import caffe
from conftest import run_caffe_tool, training_losses

# A linear regression y = x W + b with a learnable exact solution.
REGRESSION_NET = """
name: "regression"
layer {{ name: "data" type: "{data_type}" top: "x" top: "y" {data_param} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "x" top: "pred"
        inner_product_param {{ num_output: 2 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ type: "Python" name: "loss" bottom: "pred" bottom: "y" top: "loss"
        python_param {{ module: "pyloss" layer: "EuclideanLossLayer" }} loss_weight: 1 }}
"""
SOLVER = """
net: "{net}"
base_lr: 0.05
momentum: 0.9
lr_policy: "fixed"
max_iter: {iters}
display: 10
solver_mode: CPU
random_seed: 7
snapshot_prefix: "{prefix}"
"""


def regression_data(n=64, seed=5):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    w = rng.standard_normal((8, 2)).astype(np.float32)
    return x, (x @ w + 0.3).astype(np.float32)


def test_sgd_solver_trains_a_python_loss_net(write_file, tmp_path):
    x, y = regression_data()
    net = write_file("net.prototxt", REGRESSION_NET.format(
        data_type="Input",
        data_param="input_param { shape { dim: 64 dim: 8 } shape { dim: 64 dim: 2 } }"))
    solver = caffe.SGDSolver(str(write_file("solver.prototxt", SOLVER.format(
        net=net, iters=300, prefix=tmp_path / "snap"))))
    solver.net.blobs["x"].data[...] = x
    solver.net.blobs["y"].data[...] = y
    first = float(solver.net.forward()["loss"])
    solver.step(300)
    last = float(solver.net.forward()["loss"])
    assert first / last >= 10, (first, last)


def hdf5_regression_solver(write_file, tmp_path, mode: str = "CPU"):
    """A solver for 300 iterations of the regression net, its data in an HDF5
    file, as the caffe tool and caffe-train read it."""
    # Only the GPU bundle (ci/gpu-bundle) leaves h5py and Caffe's HDF5 out.
    h5py = pytest.importorskip("h5py", reason="the training data is written with h5py")
    x, y = regression_data()
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["x"], f["y"] = x, y
    sources = write_file("sources.txt", f"{tmp_path / 'data.h5'}\n")
    net = write_file("net.prototxt", REGRESSION_NET.format(
        data_type="HDF5Data",
        data_param=f'hdf5_data_param {{ source: "{sources}" batch_size: 64 }}'))
    solver = SOLVER.format(net=net, iters=300, prefix=tmp_path / "snap")
    return write_file("solver.prototxt", solver.replace("solver_mode: CPU", f"solver_mode: {mode}"))


def test_caffe_train_tool_trains_with_the_installed_layer(write_file, tmp_path):
    solver = hdf5_regression_solver(write_file, tmp_path)
    result = run_caffe_tool("train", "-solver", str(solver), cwd=tmp_path)  # no PYTHONPATH
    assert result.returncode == 0, result.stderr[-3000:]
    losses = training_losses(result)
    assert len(losses) >= 10
    assert losses[-1] <= losses[0] / 10, losses
    assert (tmp_path / "snap_iter_300.caffemodel").is_file()


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+) kB", status.read()).group(1))


def test_repeated_forward_backward_does_not_grow_memory(write_file):
    x, y = regression_data(n=64)
    net = caffe.Net(str(write_file("net.prototxt", REGRESSION_NET.format(
        data_type="Input",
        data_param="input_param { shape { dim: 64 dim: 8 } shape { dim: 64 dim: 2 } }"))),
        caffe.TRAIN)
    net.blobs["x"].data[...] = x
    net.blobs["y"].data[...] = y
    for _ in range(500):  # warm up allocator pools and caches
        net.forward()
        net.backward()
    before = _rss_kib()
    for _ in range(5000):
        net.forward()
        net.backward()
    grown = _rss_kib() - before
    # A net that does not leak grows by 0 KiB over 5,000 iterations. 1 MiB
    # allows allocator noise yet fails a leak of 200 bytes per iteration.
    assert grown < 1024, f"RSS grew by {grown} KiB over 5000 iterations"
