"""Several GPUs: the caffe tool refuses Python layers with a clear error, and
caffe-train (upstream's python/train.py) runs one process per GPU instead."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import caffe
from conftest import gpu_count, requires_gpu, run_caffe_tool
from test_training import hdf5_regression_solver

CAFFE_TRAIN = Path(sys.executable).parent / "caffe-train"


def run_caffe_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(CAFFE_TRAIN), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_caffe_tool_refuses_python_layers_on_several_gpus(write_file, tmp_path):
    # Refused before any GPU is touched, so this holds on any machine.
    solver = hdf5_regression_solver(write_file, tmp_path)
    result = run_caffe_tool("train", "-solver", str(solver), "-gpu", "0,1", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "cannot run Python layers on several GPUs" in result.stderr
    assert f"caffe-train --solver {solver} --gpus 0,1" in result.stderr


def test_caffe_train_describes_itself():
    result = run_caffe_train("--help", cwd=Path.cwd())
    assert result.returncode == 0, result.stderr
    assert "one process per GPU" in result.stdout
    assert "--gpus" in result.stdout


def test_caffe_train_rejects_gpus_that_are_not_numbers(tmp_path):
    result = run_caffe_train("--solver", "s.prototxt", "--gpus", "a,b", cwd=tmp_path)
    assert result.returncode == 2
    assert "--gpus takes device ids (0 1 or 0,1), not a,b" in result.stderr


@pytest.mark.skipif(gpu_count() > 0, reason="a GPU is visible: the training test runs instead")
def test_caffe_train_fails_loudly_without_a_usable_gpu(write_file, tmp_path):
    solver = hdf5_regression_solver(write_file, tmp_path, mode="GPU")
    result = run_caffe_train("--solver", str(solver), "--gpus", "0", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    if caffe.has_nccl():
        assert "rank 0 (GPU 0) exited with status" in result.stderr, result.stderr[-2000:]
    else:
        assert "this Caffe was built without NCCL" in result.stderr
    assert not (tmp_path / "snap_iter_300.caffemodel").exists()


@requires_gpu()
@pytest.mark.skipif(not caffe.has_nccl(), reason="this CUDA build has no NCCL (USE_NCCL=OFF)")
def test_caffe_train_trains_a_python_loss_net_on_the_gpu(write_file, tmp_path):
    solver = hdf5_regression_solver(write_file, tmp_path, mode="GPU")
    result = run_caffe_train("--solver", str(solver), "--gpus", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [float(v) for v in re.findall(r"Iteration \d+ .*loss = ([0-9.e+-]+)", result.stderr)]
    assert len(losses) >= 10, result.stderr[-3000:]
    assert losses[0] / losses[-1] >= 10, losses
    assert (tmp_path / "snap_iter_300.caffemodel").is_file()
