"""Shared helpers of the post-build tests.

The tests never know how the environment was built (conda-build or ci/build):
they use the interpreter they run under and the caffe tool installed beside it.
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")  # keep Caffe's INFO logs out of test output

import pytest  # noqa: E402

import caffe  # noqa: E402

LAYERS_DIR = Path(__file__).parent / "layers"   # test-only Python layer modules
CAFFE_TOOL = Path(sys.executable).parent / "caffe"


@pytest.fixture(autouse=True)
def cpu_mode():
    caffe.set_mode_cpu()


@pytest.fixture
def write_file(tmp_path):
    """Write text to a file under tmp_path and return its path."""
    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path
    return write


def run_caffe_tool(*args: str, pythonpath: Path | None = None, cwd: Path | None = None,
                   env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the caffe tool with no PYTHONPATH but, if given, one layer folder."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}
    env["GLOG_minloglevel"] = "0"  # the tests read the tool's log
    env.update(env_extra or {})
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    # backslashreplace: a log line may carry bytes that are not UTF-8 (a file name).
    return subprocess.run([str(CAFFE_TOOL), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, errors="backslashreplace", timeout=600)


def training_losses(result: subprocess.CompletedProcess) -> list[float]:
    """The losses a training run logged ("Iteration N ..., loss = X").

    Caffe logs a running average that it updates by differences, so near zero
    it can round to a tiny negative number: compare losses with <=, not by ratio.
    """
    return [float(v) for v in re.findall(r"Iteration \d+ .*loss = ([0-9.e+-]+)", result.stderr)]


@functools.cache
def gpu_count() -> int:
    """GPUs Caffe can use: 0 for a CPU-only build or a machine without a GPU."""
    probe = subprocess.run([str(CAFFE_TOOL), "device_query", "-gpu", "0"],
                           capture_output=True, text=True, timeout=120)
    return 1 if probe.returncode == 0 else 0


def pytest_configure(config):
    """CAFFE_REQUIRE_GPU=1 (a GPU runner): a GPU Caffe cannot see, or no CuPy
    for the GPU path of Python layers, fails the run instead of skipping."""
    if os.environ.get("CAFFE_REQUIRE_GPU") != "1":
        return
    if gpu_count() == 0:
        raise pytest.UsageError("CAFFE_REQUIRE_GPU=1, but this Caffe sees no GPU "
                                "(a CPU build, no driver, or no device)")
    try:
        import cupy  # noqa: F401
    except ImportError as error:
        raise pytest.UsageError(f"CAFFE_REQUIRE_GPU=1, but CuPy does not import: {error}")


def requires_gpu() -> pytest.MarkDecorator:
    """A mark that skips, saying why, unless Caffe is a CUDA build and sees a GPU."""
    return pytest.mark.skipif(gpu_count() == 0,
                              reason="needs a CUDA build of Caffe and a visible GPU")
