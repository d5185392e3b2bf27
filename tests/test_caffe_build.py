"""The compiled Caffe: pycaffe, the Python layer, the caffe tool and its errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import caffe
import fatbin
from conftest import LAYERS_DIR, linked_libraries, run_caffe_tool

PROBE_NET = """
name: "probe"
force_backward: true
layer {{ name: "data" type: "DummyData" top: "x"
        dummy_data_param {{ shape {{ dim: 4 dim: 3 }} data_filler {{ type: "gaussian" }} }} }}
layer {{ name: "probe" type: "Python" bottom: "x" top: "y"
        python_param {{ module: "{module}" layer: "{layer}" param_str: "{param}" }} }}
layer {{ name: "sum" type: "Reduction" bottom: "y" top: "s" }}
"""


def probe_net(write_file, module="probe_layers", layer="EnvProbeLayer", param="unused"):
    return write_file("net.prototxt", PROBE_NET.format(module=module, layer=layer, param=param))


def test_python_layer_is_registered():
    assert "Python" in caffe.layer_type_list()


def test_pycaffe_runs_on_numpy_2():
    assert int(np.__version__.split(".")[0]) >= 2
    assert caffe.__file__.startswith(sys.prefix)  # installed into the env, not a source tree


def test_caffe_tool_reports_its_version():
    result = run_caffe_tool("--version")
    assert result.returncode == 0
    assert "1.0.0" in result.stdout + result.stderr


def test_caffe_tool_embeds_the_python_of_its_own_env(write_file, tmp_path):
    report = tmp_path / "probe.json"
    net = probe_net(write_file, param=str(report))
    result = run_caffe_tool("time", "-model", str(net), "-iterations", "2", pythonpath=LAYERS_DIR)
    assert result.returncode == 0, result.stderr[-3000:]
    probe = json.loads(report.read_text())
    assert probe["prefix"] == sys.prefix
    assert probe["numpy"].startswith(sys.prefix)
    assert probe["layer_name"] == "probe"
    assert "Average Forward-Backward" in result.stderr


def test_pycaffe_reports_a_missing_layer_module(write_file):
    net = probe_net(write_file, module="no_such_layer_module")
    with pytest.raises(ModuleNotFoundError, match="no_such_layer_module"):
        caffe.Net(str(net), caffe.TRAIN)


def test_pycaffe_reports_a_missing_layer_class(write_file, monkeypatch):
    monkeypatch.syspath_prepend(str(LAYERS_DIR))
    net = probe_net(write_file, layer="NoSuchLayer")
    with pytest.raises(AttributeError, match="NoSuchLayer"):
        caffe.Net(str(net), caffe.TRAIN)


def test_pycaffe_raises_the_exception_from_forward(write_file, monkeypatch):
    monkeypatch.syspath_prepend(str(LAYERS_DIR))
    net = caffe.Net(str(probe_net(write_file, layer="RaisingLayer")), caffe.TRAIN)
    with pytest.raises(ValueError, match="deliberate failure in forward"):
        net.forward()


def test_caffe_tool_exits_1_for_a_missing_layer_module(write_file):
    net = probe_net(write_file, module="no_such_layer_module")
    result = run_caffe_tool("time", "-model", str(net), "-iterations", "1")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "ModuleNotFoundError: No module named 'no_such_layer_module'" in result.stderr
    assert "SIGABRT" not in result.stderr


def test_caffe_tool_exits_1_with_the_traceback_of_forward(write_file):
    net = probe_net(write_file, layer="RaisingLayer")
    result = run_caffe_tool("time", "-model", str(net), "-iterations", "1", pythonpath=LAYERS_DIR)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback (most recent call last)" in result.stderr
    assert "ValueError: RaisingLayer: deliberate failure in forward" in result.stderr
    assert "SIGABRT" not in result.stderr



def test_caffe_io_loads_images_with_current_scikit_image(tmp_path):
    skimage_io = pytest.importorskip("skimage.io", reason="caffe.io.load_image needs scikit-image")
    image = np.zeros((5, 7, 3), dtype=np.uint8)
    image[..., 0] = 255
    skimage_io.imsave(tmp_path / "red.png", image, check_contrast=False)
    color = caffe.io.load_image(str(tmp_path / "red.png"))
    gray = caffe.io.load_image(str(tmp_path / "red.png"), color=False)
    assert color.shape == (5, 7, 3) and color.dtype == np.float32
    np.testing.assert_allclose(color[0, 0], [1.0, 0.0, 0.0])
    assert gray.shape == (5, 7, 1)
    assert 0.2 < float(gray[0, 0, 0]) < 0.3  # luminance of pure red


# ELF e_machine numbers of the architectures the recipe builds for.
ELF_MACHINES = {"x86_64": 62, "aarch64": 183}


def elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(header[18:20], "little")


def test_library_pycaffe_and_tools_are_built_for_this_machine():
    # A cross build (ci/build --arch aarch64) must have compiled every binary
    # for the target: the interpreter running these tests is the target's.
    import platform
    expected = ELF_MACHINES[platform.machine()]
    prefix = Path(sys.prefix)
    binaries = [prefix / "lib" / "libcaffe.so", Path(caffe.__file__).parent / "_caffe.so",
                *(prefix / "bin" / tool for tool in ("caffe", "convert_imageset", "compute_image_mean",
                                                     "extract_features", "upgrade_net_proto_text"))]
    assert {str(b): elf_machine(b) for b in binaries} == {str(b): expected for b in binaries}


def test_import_caffe_does_not_load_scipy_or_scikit_image():
    code = "import sys, caffe; print(sorted(m for m in ('scipy', 'skimage') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.skipif("CAFFE_EXPECT_CUDA" not in os.environ,
                    reason="CAFFE_EXPECT_CUDA (the recipe's tests and ci/test set it) names the "
                           "flavour this build must be")
def test_libcaffe_links_cuda_exactly_when_the_flavour_is_cuda():
    # Caffe's CMake falls back to a CPU-only build with a mere warning when it
    # cannot find CUDA: only the linked libraries tell which flavour was built.
    libcaffe = Path(sys.prefix) / "lib" / "libcaffe.so"
    linked = linked_libraries(libcaffe)
    cuda = os.environ["CAFFE_EXPECT_CUDA"] not in ("", "None")
    for library in ("libcudart.so", "libcublas.so", "libcurand.so", "libcudnn.so"):
        assert (library in linked) == cuda, f"{library} in ldd of {libcaffe}:\n{linked}"
    if cuda:  # the runtime of the CUDA major it was built with (its ABI changes with each)
        major = os.environ["CAFFE_EXPECT_CUDA"].split(".")[0]
        assert f"libcudart.so.{major} " in linked, linked


@pytest.mark.skipif(os.environ.get("CAFFE_EXPECT_CUDA", "None") in ("", "None"),
                    reason="a CPU build carries no GPU code")
def test_libcaffe_carries_the_gpu_code_the_build_asked_for():
    # build-caffe.sh writes the architectures it asked nvcc for; the library's
    # fat binaries must hold exactly those: machine code for each sm_XX, PTX
    # for each compute_XX (what cuobjdump --list-elf / --list-ptx show).
    asked = (Path(sys.prefix) / "share" / "caffe" / "cuda-architectures.txt").read_text().split()
    assert any(arch.startswith("sm_") for arch in asked), asked
    assert fatbin.architectures(Path(sys.prefix) / "lib" / "libcaffe.so") == set(asked)


def test_legacy_layers_read_param_str_underscore(write_file, monkeypatch):
    monkeypatch.syspath_prepend(str(LAYERS_DIR))
    net = caffe.Net(str(probe_net(write_file, layer="LegacyParamStrLayer", param="scales: 8 16 32")),
                    caffe.TRAIN)
    assert net.layer_dict["probe"].received == "scales: 8 16 32"


CWD_LAYER = """
import caffe


class Double(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 2 * top[0].diff
"""


def test_caffe_tool_finds_a_layer_module_in_the_working_directory(write_file, tmp_path):
    write_file("cwd_only_layer.py", CWD_LAYER)
    net = probe_net(write_file, module="cwd_only_layer", layer="Double")
    result = run_caffe_tool("time", "-model", str(net), "-iterations", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Average Forward-Backward" in result.stderr


def test_pythonsafepath_keeps_the_working_directory_off_sys_path(write_file, tmp_path):
    write_file("cwd_only_layer.py", CWD_LAYER)
    net = probe_net(write_file, module="cwd_only_layer", layer="Double")
    result = run_caffe_tool("time", "-model", str(net), "-iterations", "1", cwd=tmp_path,
                            env_extra={"PYTHONSAFEPATH": "1"})
    assert result.returncode == 1, result.stderr[-3000:]
    assert "ModuleNotFoundError: No module named 'cwd_only_layer'" in result.stderr
