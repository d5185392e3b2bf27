"""pycaffe's Python API and the commands the package installs, on NumPy 2 and
current pandas, scikit-image, pydot and protobuf: datum conversions against
what convert_imageset writes and Caffe's Data layer reads, Transformer,
Classifier, Detector, drawing, net_spec, coord_map, and classify, detect,
draw_net run for real. Deprecations that caffe's own code triggers are errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import caffe
import caffe.draw
from caffe import layers as L, params as P
from caffe.coord_map import crop
from caffe.proto import caffe_pb2
from conftest import LAYERS_DIR

# Warnings are attributed to the caller: these are the ones caffe's modules cause.
pytestmark = [pytest.mark.filterwarnings("error::DeprecationWarning:caffe"),
              pytest.mark.filterwarnings("error::FutureWarning:caffe")]
BIN = Path(sys.executable).parent
# The same for the commands, whose own code runs as __main__.
COMMAND_WARNINGS = ",".join(f"error::{kind}:{module}"
                            for kind in ("DeprecationWarning", "FutureWarning")
                            for module in ("__main__", "caffe.io", "caffe.classifier",
                                           "caffe.detector", "caffe.draw", "caffe.pycaffe"))

# A deploy net: a 3 x 8 x 8 input, 4 classes.
DEPLOY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def run_command(name, *args, cwd, env_extra=None):
    env = {**os.environ, "GLOG_minloglevel": "2", "PYTHONWARNINGS": COMMAND_WARNINGS,
           **(env_extra or {})}
    return subprocess.run([str(BIN / name), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def model(tmp_path):
    """The deploy net's prototxt and weights (Gaussian fillers, saved once)."""
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(DEPLOY)
    weights = tmp_path / "tiny.caffemodel"
    caffe.set_random_seed(7)
    caffe.Net(str(deploy), caffe.TEST).save(str(weights))
    return str(deploy), str(weights)


def rgb_image(height, width, seed):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def save_png(path, image):
    import skimage.io
    skimage.io.imsave(path, image, check_contrast=False)
    return path


# --- datums --------------------------------------------------------------

def test_uint8_and_float_arrays_round_trip_through_datums():
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    datum = caffe.io.array_to_datum(data, label=5)
    assert (datum.channels, datum.height, datum.width, datum.label) == (2, 3, 4, 5)
    assert datum.data == data.tobytes() and not datum.float_data
    back = caffe.io.datum_to_array(caffe_pb2.Datum.FromString(datum.SerializeToString()))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, data)
    back[0, 0, 0] = 9  # an array of its own, not a view of the datum's bytes
    floats = np.linspace(-1, 1, 24).reshape(2, 3, 4)
    datum = caffe.io.array_to_datum(floats)
    assert not datum.data and len(datum.float_data) == 24
    np.testing.assert_allclose(caffe.io.datum_to_array(datum), floats, rtol=1e-6)


def test_datum_to_array_names_what_it_cannot_convert():
    with pytest.raises(ValueError, match=r"takes a caffe_pb2.Datum, got bytes \(parse it first"):
        caffe.io.datum_to_array(b"\x08\x01")
    with pytest.raises(ValueError, match=r"datum holds no data .* for shape \(3, 2, 2\)"):
        caffe.io.datum_to_array(caffe_pb2.Datum(channels=3, height=2, width=2))
    with pytest.raises(ValueError, match=r"datum holds 5 values, its shape \(3, 2, 2\) needs 12"):
        caffe.io.datum_to_array(caffe_pb2.Datum(channels=3, height=2, width=2, data=b"12345"))
    with pytest.raises(ValueError, match=r"marked encoded, but its 3 bytes are not an image file"):
        caffe.io.datum_to_array(caffe_pb2.Datum(encoded=True, data=b"abc"))
    with pytest.raises(ValueError, match=r"takes a C x H x W array, got shape \(4, 4\)"):
        caffe.io.array_to_datum(np.zeros((4, 4), np.uint8))


def read_lmdb(path):
    lmdb = pytest.importorskip("lmdb", reason="reading convert_imageset's LMDB needs python-lmdb")
    with lmdb.open(str(path), readonly=True, lock=False) as env, env.begin() as txn:
        return [caffe_pb2.Datum.FromString(value) for _, value in txn.cursor()]


def data_layer_batch(write_file, source, batch):
    net = write_file("data.prototxt", f"""
layer {{ name: "d" type: "Data" top: "data" top: "label"
        data_param {{ source: "{source}" backend: LMDB batch_size: {batch} }} }}""")
    # A copy, the net alive: the top blob points into the layer's prefetch
    # buffers, which are freed with the net.
    net = caffe.Net(str(net), caffe.TEST)
    return net.forward()["data"].copy()


@pytest.mark.parametrize("flags", [[], ["--encoded"], ["--gray"], ["--gray", "--encoded"]],
                         ids=["plain", "encoded", "gray", "gray-encoded"])
def test_datums_as_convert_imageset_writes_them(tmp_path, write_file, flags):
    images = [rgb_image(6, 5, seed) for seed in (1, 2)]
    for i, image in enumerate(images):
        save_png(tmp_path / f"img{i}.png", image if "--gray" not in flags else image[..., 0])
    write_file("list.txt", "img0.png 0\nimg1.png 1\n")
    db = tmp_path / "db"
    result = run_command("convert_imageset", *flags, f"{tmp_path}/", tmp_path / "list.txt", db,
                         cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    datums = read_lmdb(db)
    assert [d.encoded for d in datums] == ["--encoded" in flags] * 2
    arrays = [caffe.io.datum_to_array(d) for d in datums]
    for array, image in zip(arrays, images):
        assert array.dtype == np.uint8
        expected = image[..., 2::-1].transpose(2, 0, 1) if "--gray" not in flags else image[None, ..., 0]
        np.testing.assert_array_equal(array, expected)  # Caffe's BGR, C x H x W
    # Caffe's own Data layer reads the same values.
    np.testing.assert_array_equal(data_layer_batch(write_file, db, 2), np.stack(arrays))


# --- Transformer, Classifier, Detector -----------------------------------

def test_transformer_preprocess_and_deprocess_are_inverse():
    transformer = caffe.io.Transformer({"data": (1, 3, 4, 5)})
    transformer.set_transpose("data", (2, 0, 1))
    transformer.set_channel_swap("data", (2, 1, 0))
    transformer.set_raw_scale("data", 255)
    transformer.set_mean("data", np.array([10.0, 20.0, 30.0]))
    image = np.random.default_rng(0).random((4, 5, 3)).astype(np.float32)
    data = transformer.preprocess("data", image)
    assert data.shape == (3, 4, 5)
    np.testing.assert_allclose(data[0], image[..., 2] * 255 - 10, rtol=1e-5)
    np.testing.assert_allclose(transformer.deprocess("data", data), image, atol=1e-5)


@pytest.mark.parametrize("oversample", [True, False])
def test_classifier_predicts_probabilities(model, oversample):
    classifier = caffe.Classifier(*model, image_dims=(10, 10))
    images = [rgb_image(12, 14, seed).astype(np.float32) / 255 for seed in (3, 4)]
    predictions = classifier.predict(images, oversample=oversample)
    assert predictions.shape == (2, 4)
    np.testing.assert_allclose(predictions.sum(axis=1), 1, rtol=1e-5)
    if not oversample:  # the center 8 x 8 crop of the image resized to 10 x 10
        resized = caffe.io.resize_image(images[0], (10, 10))[1:9, 1:9]
        classifier.blobs["data"].data[...] = resized.transpose(2, 0, 1)
        np.testing.assert_allclose(classifier.forward()["prob"][0], predictions[0], rtol=1e-5)


@pytest.mark.parametrize("context_pad", [None, 2])
def test_detector_classifies_windows(tmp_path, model, context_pad):
    image_file = save_png(tmp_path / "scene.png", rgb_image(20, 24, 5))
    detector = caffe.Detector(*model, raw_scale=255, context_pad=context_pad)
    windows = np.array([[0, 0, 10, 12], [4.0, 6.0, 19.0, 23.0]])  # float coordinates too
    detections = detector.detect_windows(zip([str(image_file)], [windows]))
    assert [d["filename"] for d in detections] == [str(image_file)] * 2
    assert all(d["prediction"].shape == (4,) for d in detections)
    for detection in detections:
        np.testing.assert_allclose(detection["prediction"].sum(), 1, rtol=1e-5)
    if context_pad is None:  # a plain crop of the window, resized to the input
        image = caffe.io.load_image(str(image_file))
        window = caffe.io.resize_image(image[0:10, 0:12], (8, 8))
        detector.blobs["data"].data[...] = detector.transformer.preprocess("data", window)
        np.testing.assert_allclose(detector.forward()["prob"][0], detections[0]["prediction"],
                                   rtol=1e-5)
    with pytest.raises(ValueError, match="no windows to detect"):
        detector.detect_windows([(str(image_file), [])])


# --- drawing, net_spec, coord_map ---------------------------------------

def test_draw_net_to_file_writes_a_png(tmp_path):
    net = caffe_pb2.NetParameter()
    from google.protobuf import text_format
    text_format.Merge(DEPLOY, net)
    caffe.draw.draw_net_to_file(net, str(tmp_path / "net.png"), rankdir="TB")
    assert (tmp_path / "net.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_drawing_without_pydot_or_graphviz_names_what_to_install(tmp_path):
    script = ("import sys; sys.modules['pydot'] = sys.modules['pydotplus'] = None\n"
              "import caffe.draw\n"  # importing works: the error comes with the drawing
              "from caffe.proto import caffe_pb2\n"
              "caffe.draw.draw_net(caffe_pb2.NetParameter(), 'LR')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert ("ImportError: drawing a net needs pydot and Graphviz: conda install pydot graphviz"
            in result.stderr)
    (tmp_path / "net.prototxt").write_text(DEPLOY)
    # A PATH without dot. It keeps a python: conda-build may give long-prefix
    # commands "#!/usr/bin/env python".
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bare / "python").chmod(0o755)
    no_dot = run_command("draw_net", "net.prototxt", "net.png", cwd=tmp_path,
                         env_extra={"PATH": str(bare)})
    assert no_dot.returncode == 1
    assert no_dot.stderr.strip().endswith(
        "draw_net: drawing a net needs Graphviz's dot program, which is not on PATH: "
        "conda install pydot graphviz (or pip install pydot, and Graphviz from your system)")


def test_net_spec_builds_a_net_with_a_python_layer(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(LAYERS_DIR))
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3]))
    n.ip = L.InnerProduct(n.data, num_output=2, weight_filler=dict(type="constant", value=1))
    report = tmp_path / "probe.json"  # the layer writes it at setup
    n.probe = L.Python(n.ip, module="probe_layers", layer="EnvProbeLayer", param_str=str(report))
    path = tmp_path / "spec.prototxt"
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TEST)
    assert list(net.blobs) == ["data", "ip", "probe"]
    assert json.loads(report.read_text())["layer_name"] == "probe"
    net.blobs["data"].data[...] = np.arange(6).reshape(2, 3)
    np.testing.assert_allclose(net.forward()["probe"], [[3, 3], [12, 12]])


def test_coord_map_crop_aligns_an_upsampled_map_with_the_input(tmp_path):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 32, 32]))
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3, pad=100)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.up = L.Deconvolution(n.pool, convolution_param=dict(num_output=4, kernel_size=4, stride=2,
                                                           bias_term=False))
    n.score = crop(n.up, n.data)
    proto = n.to_proto()
    crop_layer = next(layer for layer in proto.layer if layer.type == "Crop")
    # Input pixel i is conv pixel i + 99 (pad 100, kernel 3); pooling by 2 and
    # the deconvolution's kernel 4, stride 2 bring it back shifted by 1 more.
    assert (crop_layer.crop_param.axis, list(crop_layer.crop_param.offset)) == (2, [100])
    path = tmp_path / "fcn.prototxt"
    path.write_text(str(proto))
    net = caffe.Net(str(path), caffe.TEST)
    assert net.blobs["up"].data.shape == (1, 4, 232, 232)
    assert net.blobs["score"].data.shape == (1, 4, 32, 32)


# --- the commands ---------------------------------------------------------

@pytest.mark.parametrize("command", ["classify", "detect", "draw_net", "caffe-train"])
def test_each_command_answers_help(tmp_path, command):
    result = run_command(command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")


def test_classify_an_image_file(tmp_path, model):
    save_png(tmp_path / "cat.png", rgb_image(30, 40, 6))
    # The default mean (the package's ImageNet mean, 256 x 256) as its per-channel mean.
    result = run_command("classify", "cat.png", "out.npy", "--model_def", model[0],
                         "--pretrained_model", model[1], "--images_dim", "10,10", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Using the per-channel mean of" in result.stdout
    predictions = np.load(tmp_path / "out.npy")
    assert predictions.shape == (1, 4)
    np.testing.assert_allclose(predictions.sum(), 1, rtol=1e-5)


def write_windows(tmp_path):
    save_png(tmp_path / "a.png", rgb_image(20, 24, 8))
    save_png(tmp_path / "b.png", rgb_image(16, 16, 9))
    (tmp_path / "windows.csv").write_text("filename,ymin,xmin,ymax,xmax\n"
                                          "a.png,0,0,10,12\na.png,4,6,19,23\nb.png,2,2,14,14\n")


def test_detect_writes_a_csv_of_windows_and_class_scores(tmp_path, model):
    pytest.importorskip("pandas", reason="detect needs pandas")
    write_windows(tmp_path)
    # context_pad scaled to the 8 x 8 input (the default, 16, is for 227 x 227 nets)
    result = run_command("detect", "--crop_mode", "list", "--context_pad", 2, "--model_def", model[0],
                         "--pretrained_model", model[1], "windows.csv", "out.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Processed 3 windows" in result.stdout
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "filename,ymin,xmin,ymax,xmax,class0,class1,class2,class3"
    rows = [line.split(",") for line in lines[1:]]
    assert [row[:5] for row in rows] == [["a.png", "0", "0", "10", "12"],
                                         ["a.png", "4", "6", "19", "23"],
                                         ["b.png", "2", "2", "14", "14"]]
    np.testing.assert_allclose([sum(map(float, row[5:])) for row in rows], 1, rtol=1e-5)


def test_detect_names_what_it_is_missing_before_any_work(tmp_path, model):
    write_windows(tmp_path)
    args = ("--model_def", model[0], "--pretrained_model", model[1])
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "pandas.py").write_text("raise ImportError('hidden by the test')\n")
    no_pandas = run_command("detect", "--crop_mode", "list", *args, "windows.csv", "out.csv",
                            cwd=tmp_path, env_extra={"PYTHONPATH": str(hide)})
    assert (no_pandas.returncode, no_pandas.stderr.strip()) == (
        1, "detect needs pandas: conda install pandas")
    pytest.importorskip("pandas", reason="the checks below come after pandas'")
    (hide / "pandas.py").unlink()
    (hide / "tables.py").write_text("raise ImportError('hidden by the test')\n")
    no_tables = run_command("detect", "--crop_mode", "list", *args, "windows.csv", "out.h5",
                            cwd=tmp_path, env_extra={"PYTHONPATH": str(hide)})
    assert (no_tables.returncode, no_tables.stderr.strip()) == (
        1, "detect writes .h5 output with PyTables: conda install pytables, or name a .csv output file")
    assert not (tmp_path / "out.h5").exists()
    no_search = run_command("detect", *args, "windows.csv", "out.csv", cwd=tmp_path)
    assert no_search.returncode == 1
    assert "--crop_mode selective_search needs the selective_search_ijcv_with_python" in no_search.stderr
    txt_list = run_command("detect", "--crop_mode", "list", *args, "images.txt", "out.csv", cwd=tmp_path)
    assert txt_list.returncode == 1
    assert "--crop_mode list reads the windows from a .csv input" in txt_list.stderr


def test_draw_net_draws_a_png(tmp_path):
    (tmp_path / "net.prototxt").write_text(DEPLOY)
    result = run_command("draw_net", "net.prototxt", "net.png", "--rankdir", "TB", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "net.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
