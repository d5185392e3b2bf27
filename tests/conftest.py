"""Shared helpers of the post-build tests.

The tests never know how the environment was built (conda-build or ci/build):
they use the interpreter they run under and the caffe tool installed beside it.
"""
from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")  # keep Caffe's INFO logs out of test output

import pytest  # noqa: E402

import caffe  # noqa: E402

LAYERS_DIR = Path(__file__).parent / "layers"   # test-only Python layer modules
CAFFE_TOOL = Path(sys.executable).parent / "caffe"


def cpu_has_avx512() -> bool:
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), "")
    return "avx512f" in flags.split()


def cpu_has_sve() -> bool:
    """Whether this is an ARM CPU with SVE (AT_HWCAP's HWCAP_SVE bit, which
    qemu's user mode also reports for the CPU it emulates)."""
    if platform.machine() != "aarch64":
        return False
    words = Path("/proc/self/auxv").read_bytes()
    pairs = [int.from_bytes(words[i:i + 8], "little") for i in range(0, len(words), 8)]
    hwcap = dict(zip(pairs[0::2], pairs[1::2])).get(16, 0)  # AT_HWCAP
    return bool(hwcap & (1 << 22))                          # HWCAP_SVE


# Primitive kinds for which oneDNN has only reference code for the tests' nets
# on this CPU, where a layer naming no engine runs Caffe's code
# (docs/cpu-engine.md). Seen with oneDNN 3.7 (Debian trixie's; built, as
# conda-forge's, without the Arm Compute Library) under qemu: without SVE
# (neoverse-n1) no JIT kernel for convolution (gemm:ref), pooling, eltwise
# (ReLU) or LRN; with SVE (neoverse-v1) none for LRN, nor for convolutions with
# as few channels as the tests' (16 channels get brgconv). Empty on x86 at
# every level the tests use.
REFERENCE_ONLY = frozenset()
if platform.machine() == "aarch64":
    REFERENCE_ONLY = frozenset({"convolution", "lrn"} | (set() if cpu_has_sve()
                                                          else {"pooling", "eltwise"}))


def on_onednn_here(kinds) -> set[str]:
    """Of kinds ("pooling", "eltwise/backward_data"), those a layer naming no
    engine runs on oneDNN on this CPU."""
    return {kind for kind in kinds if kind.split("/")[0] not in REFERENCE_ONLY}


def linked_libraries(path: Path) -> str:
    """ldd's listing of what the loader resolves for path, from the loader of
    this interpreter: under emulation (a cross build's tests) the ldd on PATH
    is the build machine's and cannot read the target's files."""
    maps = Path("/proc/self/maps").read_text().splitlines()
    loader = next(line.split()[-1] for line in maps if "/ld-linux" in line)
    return subprocess.run([loader, "--list", str(path)], capture_output=True, text=True,
                          check=True, timeout=60).stdout


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
