"""Several GPUs: the caffe tool refuses Python layers with a clear error, and
caffe-train (upstream's python/train.py) runs one process per GPU instead."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import caffe
from conftest import gpu_count, requires_gpu, run_caffe_tool, training_losses
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
@pytest.mark.skipif(not caffe.has_nccl(), reason="this build has no NCCL (CPU-only, or USE_NCCL=OFF)")
def test_caffe_train_trains_a_python_loss_net_on_the_gpu(write_file, tmp_path):
    solver = hdf5_regression_solver(write_file, tmp_path, mode="GPU")
    result = run_caffe_train("--solver", str(solver), "--gpus", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = training_losses(result)
    assert len(losses) >= 10, result.stderr[-3000:]
    assert losses[-1] <= losses[0] / 10, losses
    assert (tmp_path / "snap_iter_300.caffemodel").is_file()


def caffe_train_module():
    """caffe-train's functions, loaded from the installed command."""
    import importlib.machinery
    import importlib.util
    loader = importlib.machinery.SourceFileLoader("caffe_train", str(CAFFE_TRAIN))
    spec = importlib.util.spec_from_loader("caffe_train", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def input_regression_solver(write_file, tmp_path, solver_type="SGD", extra=""):
    from test_training import REGRESSION_NET, SOLVER
    net = write_file("net.prototxt", REGRESSION_NET.format(
        data_type="Input",
        data_param="input_param { shape { dim: 64 dim: 8 } shape { dim: 64 dim: 2 } }"))
    text = SOLVER.format(net=net, iters=50, prefix=tmp_path / "snap")
    if solver_type in ("AdaGrad", "RMSProp"):  # Caffe refuses momentum with these
        text = text.replace("momentum: 0.9\n", "")
    return write_file(f"{solver_type}.prototxt", text + f'type: "{solver_type}"\n' + extra), net


@pytest.mark.parametrize("solver_type", ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"])
def test_caffe_train_builds_the_solver_type_the_prototxt_names(write_file, tmp_path, solver_type):
    solver_file, _ = input_regression_solver(write_file, tmp_path, solver_type)
    solver = caffe_train_module().make_solver(str(solver_file))
    assert type(solver).__name__ == f"{solver_type}Solver"


def test_caffe_train_fine_tunes_from_weights(write_file, tmp_path):
    from test_training import regression_data
    solver_file, net_file = input_regression_solver(write_file, tmp_path, "Adam")
    x, y = regression_data()
    trained = caffe.get_solver(str(solver_file))
    trained.net.blobs["x"].data[...], trained.net.blobs["y"].data[...] = x, y
    trained.step(50)
    weights = tmp_path / "trained.caffemodel"
    trained.net.save(str(weights))
    expected = float(trained.net.forward()["loss"])
    solver = caffe_train_module().make_solver(str(solver_file), weights=[str(weights)])
    solver.net.blobs["x"].data[...], solver.net.blobs["y"].data[...] = x, y
    assert float(solver.net.forward()["loss"]) == pytest.approx(expected, rel=1e-6)
    fresh = caffe.get_solver(str(solver_file))
    fresh.net.blobs["x"].data[...], fresh.net.blobs["y"].data[...] = x, y
    assert float(fresh.net.forward()["loss"]) > 2 * expected


def test_caffe_train_parses_and_carries_its_flags():
    train = caffe_train_module()
    _, args = train.parse_args(["--solver", "s.prototxt", "--weights", "a.caffemodel,b.caffemodel",
                                "--gpus", "0,1", "2", "--level", "2", "--stage", "x,y", "--timing"])
    assert (args.solver, args.weights, args.gpus, args.level, args.stage, args.timing) == (
        "s.prototxt", ["a.caffemodel", "b.caffemodel"], [0, 1, 2], 2, ["x", "y"], True)


def test_caffe_train_writes_the_level_and_stages_into_the_solver(write_file, tmp_path):
    solver_file, _ = input_regression_solver(write_file, tmp_path)
    copy = caffe_train_module().with_train_state(str(solver_file), 2, ["x", "y"])
    from google.protobuf import text_format
    from caffe.proto import caffe_pb2
    param = text_format.Merge(open(copy).read(), caffe_pb2.SolverParameter())
    assert (param.train_state.level, list(param.train_state.stage)) == (2, ["x", "y"])
    assert param.base_lr == pytest.approx(0.05)


@pytest.mark.parametrize("args, message", [
    (["--weights", "w.caffemodel", "--snapshot", "s.solverstate"], "not both"),
])
def test_caffe_train_refuses_snapshot_with_weights(write_file, tmp_path, args, message):
    solver_file, _ = input_regression_solver(write_file, tmp_path)
    result = run_caffe_train("--solver", str(solver_file), *args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr


def test_caffe_train_names_a_bad_solver_type_or_missing_file(write_file, tmp_path):
    solver_file, _ = input_regression_solver(write_file, tmp_path, "Rprop")
    result = run_caffe_train("--solver", str(solver_file), cwd=tmp_path)
    assert result.returncode == 1
    assert f'unknown solver type "Rprop" in {solver_file} (known types: SGD, Nesterov' in result.stderr
    good, _ = input_regression_solver(write_file, tmp_path)
    result = run_caffe_train("--solver", str(good), "--weights", "missing.caffemodel", cwd=tmp_path)
    assert result.returncode == 1 and "file not found: missing.caffemodel" in result.stderr
    result = run_caffe_train("--solver", "nothere.prototxt", cwd=tmp_path)
    assert result.returncode == 1 and "solver file not found: nothere.prototxt" in result.stderr


@pytest.mark.parametrize("field", ["net", "train_net", "test_net"])
def test_caffe_train_names_a_missing_net_file_before_any_rank_starts(write_file, tmp_path, field):
    solver_file, net = input_regression_solver(write_file, tmp_path)
    text = solver_file.read_text().replace(f'net: "{net}"', f'{field}: "missing.prototxt"')
    if field == "test_net":  # with a train net that exists
        text += f'train_net: "{net}"\ntest_iter: 1\ntest_interval: 10\n'
    solver = write_file("missing_net.prototxt", text)
    result = run_caffe_train("--solver", str(solver), "--gpus", "0,1", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert (f"{field} file not found: missing.prototxt (named by {field} in {solver})"
            in result.stderr)
    assert "Using devices" not in result.stderr   # no rank started


PYTHON_LAYER = ('layer {{ name: "probe" type: "Python" bottom: "x" top: "x2" {rule} '
                'python_param {{ module: "pyloss" layer: "EuclideanLossLayer" }} }}')
PLAIN_NET = """
layer {{ name: "data" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
{python}
"""


@pytest.mark.parametrize("rule, solver_extra, flags, refused", [
    ("", "", [], True),                                             # in the train net
    ("include { phase: TEST }", "", [], False),                     # TEST only, never tested
    ("include { phase: TEST }", "test_iter: 1\ntest_interval: 10\n", [], True),
    ("include { stage: 'deploy' }", "", [], False),                 # filtered out by stage
    ("include { stage: 'deploy' }", "", ["-stage", "deploy"], True),
    ("include { min_level: 2 }", "", ["-level", "2"], True),
])
def test_caffe_tool_refuses_exactly_when_a_python_layer_would_run(
        write_file, tmp_path, rule, solver_extra, flags, refused):
    net = write_file("net.prototxt", PLAIN_NET.format(python=PYTHON_LAYER.format(rule=rule)))
    solver = write_file("solver.prototxt", f'net: "{net}"\nbase_lr: 0.1\n{solver_extra}')
    result = run_caffe_tool("train", "-solver", str(solver), "-gpu", "0,1", *flags, cwd=tmp_path)
    assert ("cannot run Python layers on several GPUs" in result.stderr) == refused, \
        result.stderr[-2000:]
    assert result.returncode != 0 or not refused


def test_caffe_tool_refusal_reads_separate_test_net_files(write_file, tmp_path):
    train_net = write_file("train.prototxt", PLAIN_NET.format(python=""))
    test_net = write_file("test.prototxt", PLAIN_NET.format(python=PYTHON_LAYER.format(rule="")))
    solver = write_file("solver.prototxt", f'train_net: "{train_net}"\ntest_net: "{test_net}"\n'
                                           "test_iter: 1\ntest_interval: 10\nbase_lr: 0.1\n")
    result = run_caffe_tool("train", "-solver", str(solver), "-gpu", "0,1", cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot run Python layers on several GPUs" in result.stderr


def test_caffe_tool_refusal_names_the_command_with_the_users_flags(write_file, tmp_path):
    solver = hdf5_regression_solver(write_file, tmp_path)
    result = run_caffe_tool("train", "-solver", str(solver), "-gpu", "0,1", "-weights", "w.caffemodel",
                            "-level", "2", "-stage", "a,b", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert (f"caffe-train --solver {solver} --gpus 0,1 --weights w.caffemodel --level 2 "
            f"--stage a,b") in result.stderr


@requires_gpu()
@pytest.mark.skipif(not caffe.has_nccl(), reason="this build has no NCCL (CPU-only, or USE_NCCL=OFF)")
def test_caffe_train_matches_caffe_train_tool_with_adam_and_a_prefetching_layer(write_file, tmp_path):
    from test_data_layer import train_solver, training_losses
    from conftest import LAYERS_DIR
    solver = train_solver(write_file, tmp_path, "workers: 2", mode="GPU")
    solver.write_text(solver.read_text().replace("momentum: 0.9", 'type: "Adam"\nmomentum: 0.9'))
    env_path = {"PYTHONPATH": str(LAYERS_DIR)}
    tool = run_caffe_tool("train", "-solver", str(solver), "-gpu", "0", cwd=tmp_path,
                          pythonpath=LAYERS_DIR)
    assert tool.returncode == 0, tool.stderr[-3000:]
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **env_path}
    ours = subprocess.run([str(CAFFE_TRAIN), "--solver", str(solver), "--gpus", "0"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert ours.returncode == 0, ours.stderr[-3000:]
    tool_losses, our_losses = training_losses(tool), training_losses(ours)
    assert our_losses[0] / our_losses[-1] >= 10, our_losses
    assert our_losses[-1] == pytest.approx(tool_losses[-1], rel=1e-3, abs=1e-5)
