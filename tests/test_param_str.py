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
    ("scale: 2, mode: sum", {"scale": 2, "mode": "sum"}),
    ("scale: 0.5\nenabled: true\nname: 'a b'", {"scale": 0.5, "enabled": True, "name": "a b"}),
])
def test_parses_json_python_and_yaml_like_mappings(text, expected):
    assert parse_param_str(text) == expected


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "is not 'key: value'"),
    ("{1: 2}", "key 1 is not a string"),
    ("{'a': }", "neither a JSON object nor a Python dict literal"),
    ("a: 1, b", "entry 'b' is not 'key: value'"),
    (": 3", "entry ': 3' is not 'key: value'"),
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
