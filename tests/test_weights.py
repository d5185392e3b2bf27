"""Weights that set none of a net's parameters are an error, in pycaffe, the
caffe tool and caffe-train; a file that sets some of them loads and names the rest."""
import re

import numpy as np
import pytest

import caffe
from conftest import run_caffe_tool

# Two layers with parameters; "fc2"'s filler value tells whether it was loaded.
NET = """
name: "two"
layer {{ name: "data" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
layer {{ name: "{fc1}" type: "InnerProduct" bottom: "x" top: "h"
        inner_product_param {{ num_output: 4 weight_filler {{ type: "constant" value: {value} }} }} }}
layer {{ name: "{fc2}" type: "InnerProduct" bottom: "h" top: "y"
        inner_product_param {{ num_output: 2 weight_filler {{ type: "constant" value: {value} }} }} }}
"""


def net_file(write_file, fc1="fc1", fc2="fc2", value=1):
    return str(write_file(f"{fc1}-{fc2}-{value}.prototxt", NET.format(fc1=fc1, fc2=fc2, value=value)))


def saved(write_file, tmp_path, fc1="fc1", fc2="fc2", hdf5=False):
    """Weights of value 2 for a net whose layers are fc1 and fc2."""
    net = caffe.Net(net_file(write_file, fc1, fc2, value=2), caffe.TEST)
    path = tmp_path / f"{fc1}-{fc2}.{'h5' if hdf5 else 'caffemodel'}"
    net.save_hdf5(str(path)) if hdf5 else net.save(str(path))
    return str(path)


def test_an_empty_weights_file_raises_naming_it(write_file, tmp_path):
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    message = (rf"Weights file '{re.escape(str(empty))}' holds none of the 2 layers with "
               r"parameters of net 'two' \('fc1', 'fc2'\): the file holds no layers at all")
    net = caffe.Net(net_file(write_file), caffe.TEST)
    with pytest.raises(caffe.CaffeError, match=message):
        net.copy_from(str(empty))
    with pytest.raises(caffe.CaffeError, match=message):
        caffe.Net(net_file(write_file), str(empty), caffe.TEST)
    with pytest.raises(caffe.CaffeError, match=message):
        caffe.Net(net_file(write_file), caffe.TEST, weights=str(empty))


# A binary file lists its layers in the net's order; HDF5 in the order its
# library iterates them (by name in Debian 12's, by creation in sid's).
@pytest.mark.parametrize("hdf5", [False, True], ids=["binary", "hdf5"])
def test_another_nets_weights_raise_naming_the_files_layers(write_file, tmp_path, hdf5):
    other = saved(write_file, tmp_path, "conv_a", "conv_b", hdf5=hdf5)
    net = caffe.Net(net_file(write_file), caffe.TEST)
    with pytest.raises(caffe.CaffeError, match=r"holds none of the 2 layers with parameters of net "
                                              r"'two' \('fc1', 'fc2'\): its layers are named ") as raised:
        net.copy_from(other)
    named = re.findall(r"'(\w+)'", str(raised.value).split("its layers are named ")[1])
    expected = ["data", "conv_a", "conv_b"]
    assert (sorted(named) if hdf5 else named) == (sorted(expected) if hdf5 else expected)
    np.testing.assert_array_equal(net.params["fc1"][0].data, 1)  # untouched


@pytest.mark.parametrize("hdf5", [False, True], ids=["binary", "hdf5"])
def test_fitting_weights_load_every_layer(write_file, tmp_path, hdf5):
    weights = saved(write_file, tmp_path, hdf5=hdf5)
    net = caffe.Net(net_file(write_file), caffe.TEST)
    net.copy_from(weights)
    for name in ("fc1", "fc2"):
        np.testing.assert_array_equal(net.params[name][0].data, 2)


def test_weights_for_some_layers_load_them_and_leave_the_rest(write_file, tmp_path):
    # Fine-tuning a new head: the file has fc1 only (and a layer the net lacks).
    weights = saved(write_file, tmp_path, "fc1", "old_head")
    net = caffe.Net(net_file(write_file, "fc1", "new_head"), caffe.TEST)
    net.copy_from(weights)
    np.testing.assert_array_equal(net.params["fc1"][0].data, 2)
    np.testing.assert_array_equal(net.params["new_head"][0].data, 1)


def test_tool_logs_the_layers_weights_leave_untouched(write_file, tmp_path):
    weights = saved(write_file, tmp_path, "fc1", "old_head")
    model = net_file(write_file, "fc1", "new_head")
    result = run_caffe_tool("test", "-model", model, "-weights", weights, "-iterations", "1",
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (f"Weights file '{weights}' sets 1 of the 2 layers with parameters of net 'two'; "
            "not in the file, left as initialised: 'new_head'") in result.stderr


@pytest.mark.parametrize("command", ["test", "time", "train"])
def test_tool_refuses_an_empty_weights_file(write_file, tmp_path, command):
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    model = net_file(write_file)
    if command == "train":
        solver = write_file("solver.prototxt", f'net: "{model}"\nbase_lr: 0.1\nmax_iter: 1\n'
                                               'lr_policy: "fixed"\nsolver_mode: CPU\n')
        args = ["train", "-solver", str(solver)]
    else:
        args = [command, "-model", model, "-iterations", "1"]
    result = run_caffe_tool(*args, "-weights", str(empty), cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert re.search(rf"caffe {command}: Weights file '{re.escape(str(empty))}' holds none of "
                     r"the 2 layers with parameters", result.stderr), result.stderr[-2000:]
    assert "Check failure stack trace" not in result.stderr


def test_a_net_without_parameters_accepts_any_weights_file(write_file, tmp_path):
    weights = saved(write_file, tmp_path)
    net = caffe.Net(str(write_file("relu.prototxt", """
        layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 } } }
        layer { name: "r" type: "ReLU" bottom: "x" top: "y" }""")), caffe.TEST)
    net.copy_from(weights)  # nothing to set, nothing refused
