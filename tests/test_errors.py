"""A mistake in a net, a file or a path is a caffe.CaffeError in pycaffe and a
one-line reason with exit status 1 in the caffe tool; never an abort."""
import os
import re

import numpy as np
import pytest

import caffe
from conftest import gpu_count, run_caffe_tool

GOOD_NET = """
name: "good"
layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: %d weight_filler { type: "constant" value: 1 } } }
"""
UNKNOWN_TYPE = """
layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 } } }
layer { name: "b" type: "NoSuchLayer" bottom: "x" top: "y" }
"""
UNKNOWN_BOTTOM = """
layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 } } }
layer { name: "b" type: "ReLU" bottom: "zzz" top: "y" }
"""


def still_alive(write_file):
    """The process lives on and a correct net works."""
    net = caffe.Net(str(write_file("good.prototxt", GOOD_NET % 4)), caffe.TEST)
    net.blobs["x"].data[...] = 1.0
    np.testing.assert_array_equal(net.forward()["y"], np.full((2, 4), 3.0))


@pytest.mark.parametrize("text, message", [
    ("layer { name: 'a' type: ", r"Failed to parse NetParameter file: .*bad\.prototxt"),
    (UNKNOWN_TYPE, r"Unknown layer type: NoSuchLayer \(known types: .*ReLU"),
    (UNKNOWN_BOTTOM, r"Unknown bottom blob 'zzz' \(layer 'b', bottom index 0\)"),
])
def test_a_bad_prototxt_raises_caffe_error(write_file, text, message):
    with pytest.raises(caffe.CaffeError, match=message):
        caffe.Net(str(write_file("bad.prototxt", text)), caffe.TEST)
    still_alive(write_file)


def test_caffe_error_is_a_runtime_error():
    assert issubclass(caffe.CaffeError, RuntimeError)


def test_a_binary_file_as_prototxt_raises(write_file, tmp_path):
    binary = tmp_path / "model.prototxt"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(caffe.CaffeError, match="Failed to parse NetParameter file"):
        caffe.Net(str(binary), caffe.TEST)
    still_alive(write_file)


def saved_weights(write_file, tmp_path, outputs=4):
    net = caffe.Net(str(write_file(f"net{outputs}.prototxt", GOOD_NET % outputs)), caffe.TEST)
    path = tmp_path / f"fc{outputs}.caffemodel"
    net.save(str(path))
    return path


def test_weights_of_another_shape_raise_naming_the_layer(write_file, tmp_path):
    other = saved_weights(write_file, tmp_path, outputs=5)
    net = caffe.Net(str(write_file("net4.prototxt", GOOD_NET % 4)), caffe.TEST)
    with pytest.raises(caffe.CaffeError, match=r"Cannot copy param 0 weights from layer 'fc'; "
                                              r"shape mismatch.*5 3.*4 3"):
        net.copy_from(str(other))
    with pytest.raises(caffe.CaffeError, match="shape mismatch"):
        caffe.Net(str(write_file("net4b.prototxt", GOOD_NET % 4)), caffe.TEST, weights=str(other))
    still_alive(write_file)


def test_a_truncated_caffemodel_raises(write_file, tmp_path):
    weights = saved_weights(write_file, tmp_path)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    net = caffe.Net(str(write_file("net4.prototxt", GOOD_NET % 4)), caffe.TEST)
    with pytest.raises(caffe.CaffeError, match=r"Failed to parse NetParameter file: .*fc4\.caffemodel"):
        net.copy_from(str(weights))
    still_alive(write_file)


def test_a_solver_naming_a_missing_net_raises(write_file, tmp_path):
    solver = write_file("solver.prototxt", f'net: "{tmp_path}/missing.prototxt"\nbase_lr: 0.1\n')
    with pytest.raises(caffe.CaffeError, match=r"File not found: .*missing\.prototxt"):
        caffe.get_solver(str(solver))
    empty = write_file("empty_solver.prototxt", "")
    with pytest.raises(caffe.CaffeError, match=r"(?i)net"):
        caffe.get_solver(str(empty))
    still_alive(write_file)


def test_a_shape_that_does_not_fit_raises_at_forward(write_file):
    net = caffe.Net(str(write_file("good.prototxt", GOOD_NET % 4)), caffe.TEST)
    net.blobs["x"].reshape(2, 5)  # the inner product's weights take 3 inputs
    with pytest.raises(caffe.CaffeError, match=r"K_ == new_K \(3 vs\. 5\) Input size "
                                              r"incompatible with inner product parameters"):
        net.forward()
    still_alive(write_file)


def ppm(path, size=4):
    path.write_bytes(b"P6 %d %d 255\n" % (size, size) + bytes(3 * size * size))


@pytest.mark.skipif("ImageData" not in caffe.layer_type_list(), reason="a build without OpenCV")
def test_a_failure_in_a_prefetching_thread_reaches_forward(write_file, tmp_path):
    ppm(tmp_path / "a.ppm")
    listing = write_file("images.txt", f"{tmp_path}/a.ppm 0\n{tmp_path}/missing.ppm 1\n")
    net = caffe.Net(str(write_file("images.prototxt", f"""
        layer {{ name: "images" type: "ImageData" top: "data" top: "label"
                image_data_param {{ source: "{listing}" batch_size: 1 }} }}""")), caffe.TEST)
    failures = 0
    for _ in range(4):  # the first batch may already be loaded; the next fails
        try:
            net.forward()
        except caffe.CaffeError as error:
            assert re.search(r"ImageData layer 'images' failed while prefetching: "
                             r"Check failed: cv_img.data Could not load .*missing\.ppm", str(error))
            failures += 1
    assert failures >= 2  # every call after the failure raises, none hangs
    del net
    still_alive(write_file)


def tool_fails(result, message):
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Check failure stack trace" not in result.stderr
    assert re.search(message, result.stderr), result.stderr[-2000:]


def test_tool_reports_a_missing_solver_in_one_line(tmp_path):
    result = run_caffe_tool("train", "-solver", "solver.prototxt", cwd=tmp_path)
    tool_fails(result, r"caffe train: Check failed: .*File not found: solver\.prototxt\n")


@pytest.mark.parametrize("text, message", [
    ("net: 'net.prototxt'\nbase_lr: ", r"caffe train: .*Failed to parse SolverParameter file"),
    ("net: 'missing.prototxt'\nbase_lr: 0.1\n", r"caffe train: .*File not found: missing\.prototxt"),
])
def test_tool_reports_a_bad_solver(write_file, tmp_path, text, message):
    solver = write_file("solver.prototxt", text)
    tool_fails(run_caffe_tool("train", "-solver", str(solver), cwd=tmp_path), message)


@pytest.mark.parametrize("text, message", [
    (UNKNOWN_TYPE, r"caffe time: Check failed: .*Unknown layer type: NoSuchLayer"),
    (UNKNOWN_BOTTOM, r"caffe time: Unknown bottom blob 'zzz' \(layer 'b', bottom index 0\)"),
])
def test_tool_reports_a_bad_net(write_file, tmp_path, text, message):
    model = write_file("bad.prototxt", text)
    tool_fails(run_caffe_tool("time", "-model", str(model), cwd=tmp_path), message)


def test_tool_reports_weights_that_do_not_fit(write_file, tmp_path):
    other = saved_weights(write_file, tmp_path, outputs=5)
    model = write_file("net4.prototxt", GOOD_NET % 4)
    result = run_caffe_tool("test", "-model", str(model), "-weights", str(other),
                            "-iterations", "1", cwd=tmp_path)
    tool_fails(result, r"caffe test: Cannot copy param 0 weights from layer 'fc'; shape mismatch")


@pytest.mark.skipif(os.environ.get("CAFFE_EXPECT_CUDA", "None") == "None" or gpu_count() > 0,
                    reason="needs a CUDA build on a machine without a usable GPU")
def test_tool_reports_an_unusable_gpu_in_one_line(write_file, tmp_path):
    weights = saved_weights(write_file, tmp_path)
    model = write_file("net4.prototxt", GOOD_NET % 4)
    result = run_caffe_tool("test", "-model", str(model), "-weights", str(weights),
                            "-gpu", "0", cwd=tmp_path)
    tool_fails(result, r"caffe test: Check failed: error == cudaSuccess \(\d+ vs\. 0\) ")
    assert "\\x" not in result.stderr  # no uninitialised device name in the log


@pytest.mark.skipif(os.environ.get("CAFFE_EXPECT_CUDA", "None") != "None",
                    reason="a CUDA build accepts -gpu")
def test_tool_reports_gpu_on_a_cpu_only_build(write_file, tmp_path):
    model = write_file("net4.prototxt", GOOD_NET % 4)
    result = run_caffe_tool("time", "-model", str(model), "-gpu", "0", cwd=tmp_path)
    tool_fails(result, r"caffe time: Cannot use GPU in CPU-only Caffe")
