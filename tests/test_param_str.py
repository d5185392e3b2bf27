"""caffe_pylayer.parse_param_str and the PythonLayer base class's checks."""
import pytest

import caffe
from caffe_pylayer import LayerConfigError, parse_param_str
from conftest import LAYERS_DIR


@pytest.mark.parametrize("text, expected", [
    ("", {}),
    ("   ", {}),
    ('{"scale": 2, "mode": "sum"}', {"scale": 2, "mode": "sum"}),
    ("{'scale': 2.5, 'flags': [1, 2]}", {"scale": 2.5, "flags": [1, 2]}),
    ("{'flag': None, 'size': (3, 4)}", {"flag": None, "size": (3, 4)}),
    ("scale: 2, mode: sum", {"scale": 2, "mode": "sum"}),
    ("scale: 0.5\nenabled: true\nname: 'a b'", {"scale": 0.5, "enabled": True, "name": "a b"}),
    ("a: 1, b: 2\nc: 3", {"a": 1, "b": 2, "c": 3}),
    ("lr: 1e-3, momentum: .9, answer: yes", {"lr": 0.001, "momentum": 0.9, "answer": "yes"}),
])
def test_parses_json_python_and_yaml_like_mappings(text, expected):
    assert parse_param_str(text) == expected


@pytest.mark.parametrize("text, expected", [
    # The region-proposal layers' form: quoted keys.
    ("'num_classes': 21", {"num_classes": 21}),
    ("'feat_stride': 16, 'scales': [8, 16, 32]", {"feat_stride": 16, "scales": [8, 16, 32]}),
    # Lists keep their commas.
    ("mean: [104, 117, 123]", {"mean": [104, 117, 123]}),
    ("mean: [104, 117, 123], scale: 0.017", {"mean": [104, 117, 123], "scale": 0.017}),
    # Nested mappings, on one line and as a block.
    ("crop: {height: 224, width: 224}", {"crop": {"height": 224, "width": 224}}),
    ("split: train\ncrop:\n  height: 224\n  width: 200\nmean: [1, 2]",
     {"split": "train", "crop": {"height": 224, "width": 200}, "mean": [1, 2]}),
    ("name: 'Smith, John', path: /data/a.txt", {"name": "Smith, John", "path": "/data/a.txt"}),
])
def test_reads_quoted_keys_lists_and_nested_mappings_as_yaml_does(text, expected):
    assert parse_param_str(text) == expected


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "is not 'key: value' pairs"),
    ("{1: 2}", "key 1 is not a string"),
    ("{'a': }", "entry 'a' has no value"),
    ("a: 1, b", "entry 'b' has no value"),
    (": 3", "is not 'key: value' pairs"),
    ("mean: [1, 2", r"is not 'key: value' pairs \(expected ',' or '\]'"),
])
def test_rejects_what_is_not_a_mapping_and_names_the_layer(text, message):
    with pytest.raises(LayerConfigError, match=f"^MyLayer 'x': .*{message}"):
        parse_param_str(text, "MyLayer 'x'")


def test_base_class_fills_defaults_and_checks_ranges(write_file, monkeypatch):
    monkeypatch.syspath_prepend(str(LAYERS_DIR))
    net_text = """
        layer {{ name: "data" type: "Input" top: "a" top: "b"
                input_param {{ shape {{ dim: 2 }} shape {{ dim: 2 }} }} }}
        layer {{ name: "scaled" type: "Python" {bottoms} top: "c"
                python_param {{ module: "base_layers" layer: "ScaleLayer" param_str: "{param}" }} }}
    """
    ok = write_file("ok.prototxt", net_text.format(bottoms="bottom: 'a'", param="scale: 3"))
    net = caffe.Net(str(ok), caffe.TRAIN)
    net.blobs["a"].data[...] = [1.0, 2.0]
    assert net.forward()["c"].tolist() == [3.0, 6.0]
    layer = net.layers[list(net._layer_names).index("scaled")]
    assert layer.params == {"scale": 3, "offset": 0.0}

    too_many = write_file("bad.prototxt", net_text.format(
        bottoms="bottom: 'a' bottom: 'b' bottom: 'a'", param=""))
    with pytest.raises(LayerConfigError, match="ScaleLayer 'scaled': expects 1 to 2 bottoms, got 3"):
        caffe.Net(str(too_many), caffe.TRAIN)
