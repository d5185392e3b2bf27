"""pyloss.EuclideanLossLayer against Caffe's built-in EuclideanLoss, in real nets."""
import numpy as np
import pytest

import caffe
from caffe import layers as L
from caffe_pylayer import LayerConfigError, check_gradients
from conftest import LAYERS_DIR

# float32 on both sides, same BLAS dot: agreement to a few ulp is expected.
RTOL, ATOL = 1e-5, 1e-7

SHAPES = [(1, 1), (5, 3), (7, 2, 1, 3), (1, 3, 7, 7), (2, 3, 4, 5)]
LOSS_WEIGHTS = [1.0, 0.5, 3.0]


def loss_net(write_file, shape, loss_weight=1.0, builtin=False, name="loss", label_shape=None):
    """pred and label inputs into one loss layer, built with NetSpec."""
    n = caffe.NetSpec()
    n.pred, n.label = L.Input(shape=[dict(dim=list(shape)), dict(dim=list(label_shape or shape))],
                              ntop=2)
    if builtin:
        loss = L.EuclideanLoss(n.pred, n.label, loss_weight=loss_weight)
    else:
        loss = L.Python(n.pred, n.label, module="pyloss", layer="EuclideanLossLayer",
                        loss_weight=loss_weight)
    setattr(n, name, loss)
    proto = n.to_proto()
    proto.force_backward = True
    path = write_file(f"{'builtin' if builtin else 'python'}.prototxt", str(proto))
    return caffe.Net(str(path), caffe.TRAIN)


def run(net, pred, label, name="loss"):
    net.blobs["pred"].data[...] = pred
    net.blobs["label"].data[...] = label
    loss = float(net.forward()[name])
    net.backward()
    return loss, net.blobs["pred"].diff.copy(), net.blobs["label"].diff.copy()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("loss_weight", LOSS_WEIGHTS)
def test_matches_builtin_loss_and_gradients(write_file, shape, loss_weight):
    rng = np.random.default_rng(sum(shape))
    pred = rng.standard_normal(shape).astype(np.float32)
    label = rng.standard_normal(shape).astype(np.float32)
    ours = run(loss_net(write_file, shape, loss_weight), pred, label)
    builtin = run(loss_net(write_file, shape, loss_weight, builtin=True), pred, label)
    expected = np.sum((pred.astype(np.float64) - label) ** 2) / shape[0] / 2
    assert ours[0] == pytest.approx(expected, rel=1e-5)
    assert ours[0] == pytest.approx(builtin[0], rel=RTOL)
    np.testing.assert_allclose(ours[1], builtin[1], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ours[2], builtin[2], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ours[1], loss_weight * (pred - label) / shape[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(ours[2], -ours[1])


def test_accepts_bottoms_of_different_shapes_with_equal_counts(write_file):
    rng = np.random.default_rng(3)
    pred = rng.standard_normal((4, 6)).astype(np.float32)
    label = rng.standard_normal((4, 2, 3)).astype(np.float32)
    loss, pred_diff, _ = run(loss_net(write_file, (4, 6), label_shape=(4, 2, 3)), pred, label)
    assert loss == pytest.approx(np.sum((pred - label.reshape(4, 6)) ** 2) / 4 / 2, rel=1e-5)
    assert pred_diff.shape == (4, 6)


def test_top_is_a_scalar_like_builtin_losses(write_file):
    net = loss_net(write_file, (3, 2))
    assert net.blobs["loss"].data.shape == ()
    assert loss_net(write_file, (3, 2), builtin=True).blobs["loss"].data.shape == ()
    assert isinstance(float(net.forward()["loss"]), float)


@pytest.mark.parametrize("module", ["pyloss", "caffe_pylayer"])
def test_prototxt_text_runs_with_the_installed_module(write_file, module):
    path = write_file("classic.prototxt", """
        name: "classic"
        layer { name: "data" type: "Input" top: "pred" top: "label"
                input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }
        layer { type: 'Python' name: 'loss' bottom: 'pred' bottom: 'label' top: 'loss'
                python_param { module: '%s' layer: 'EuclideanLossLayer' } loss_weight: 1 }
    """ % module)
    net = caffe.Net(str(path), caffe.TRAIN)
    net.blobs["pred"].data[...] = 1.0
    net.blobs["label"].data[...] = 0.0
    assert float(net.forward()["loss"]) == pytest.approx(6 / 2 / 2)


@pytest.mark.parametrize("propagate_down", [(True, False), (False, True), (False, False)])
def test_honours_propagate_down(write_file, propagate_down):
    net = loss_net(write_file, (2, 3), loss_weight=1.0)
    layer = net.layers[list(net._layer_names).index("loss")]
    pred, label, loss = net.blobs["pred"], net.blobs["label"], net.blobs["loss"]
    pred.data[...] = 2.0
    label.data[...] = 0.5
    net.forward()
    pred.diff[...] = label.diff[...] = 7.0  # a sentinel backward must leave alone
    layer.backward([loss], list(propagate_down), [pred, label])
    for blob, wanted, value in ((pred, propagate_down[0], 0.75), (label, propagate_down[1], -0.75)):
        np.testing.assert_array_equal(blob.diff, value if wanted else 7.0)


def test_reuses_its_buffer_across_iterations(write_file):
    net = loss_net(write_file, (4, 5))
    layer = net.layers[list(net._layer_names).index("loss")]
    net.forward()
    buffer = layer.diff
    for _ in range(3):
        net.forward()
        net.backward()
    assert layer.diff is buffer
    assert buffer.dtype == np.float32


def test_gradients_pass_a_finite_difference_check_in_a_net(write_file):
    net = loss_net(write_file, (3, 2, 2), loss_weight=2.5)
    rng = np.random.default_rng(11)
    net.blobs["pred"].data[...] = rng.standard_normal((3, 2, 2))
    net.blobs["label"].data[...] = rng.standard_normal((3, 2, 2))
    report = check_gradients(net, "loss")
    assert report.checked == 24
    assert report.max_scaled_error < 1e-3


@pytest.mark.parametrize("bottoms, tops, message", [
    (["pred"], ["loss"], "expects 2 bottoms, got 1"),
    (["pred", "label", "pred"], ["loss"], "expects 2 bottoms, got 3"),
    (["pred", "label"], ["loss", "extra"], "expects 1 tops, got 2"),
])
def test_rejects_wrong_numbers_of_bottoms_and_tops(write_file, bottoms, tops, message):
    layer = "".join(f"bottom: '{b}' " for b in bottoms) + "".join(f"top: '{t}' " for t in tops)
    path = write_file("bad.prototxt", f"""
        layer {{ name: "data" type: "Input" top: "pred" top: "label"
                input_param {{ shape {{ dim: 2 dim: 3 }} shape {{ dim: 2 dim: 3 }} }} }}
        layer {{ type: 'Python' name: 'myloss' {layer}
                python_param {{ module: 'pyloss' layer: 'EuclideanLossLayer' }} }}
    """)
    with pytest.raises(LayerConfigError, match=f"EuclideanLossLayer 'myloss': {message}"):
        caffe.Net(str(path), caffe.TRAIN)


def test_rejects_bottoms_with_different_counts(write_file):
    with pytest.raises(LayerConfigError,
                       match=r"'loss': bottoms must hold the same number of values, got 6 \(2, 3\) "
                             r"and 8 \(2, 4\)"):
        loss_net(write_file, (2, 3), label_shape=(2, 4))


def test_rejects_bottoms_with_different_first_axes(write_file):
    with pytest.raises(LayerConfigError, match=r"same first axis, got \(2, 3\) and \(3, 2\)"):
        loss_net(write_file, (2, 3), label_shape=(3, 2))


@pytest.mark.parametrize("param_str, message", [
    ("{not json", r"is not 'key: value' pairs \(expected ',' or '\}'"),
    ("scale 2", "entry 'scale 2' has no value"),
    ("scale: 2", r"unknown param_str keys \['scale'\]; accepted keys: none"),
])
def test_rejects_an_unreadable_or_unknown_param_str(write_file, param_str, message):
    path = write_file("param.prototxt", f"""
        layer {{ name: "data" type: "Input" top: "pred" top: "label"
                input_param {{ shape {{ dim: 2 dim: 3 }} shape {{ dim: 2 dim: 3 }} }} }}
        layer {{ type: 'Python' name: 'loss' bottom: 'pred' bottom: 'label' top: 'loss'
                python_param {{ module: 'pyloss' layer: 'EuclideanLossLayer'
                               param_str: "{param_str}" }} }}
    """)
    with pytest.raises(LayerConfigError, match=f"EuclideanLossLayer 'loss': .*{message}"):
        caffe.Net(str(path), caffe.TRAIN)


def test_gradient_checker_catches_the_classic_layer_ignoring_loss_weight(write_file, monkeypatch):
    monkeypatch.syspath_prepend(str(LAYERS_DIR))
    n = caffe.NetSpec()
    n.pred, n.label = L.Input(shape=[dict(dim=[2, 3]), dict(dim=[2, 3])], ntop=2)
    n.loss = L.Python(n.pred, n.label, module="probe_layers", layer="ClassicEuclideanLossLayer",
                      loss_weight=2.0)
    net = caffe.Net(str(write_file("classic.prototxt", str(n.to_proto()))), caffe.TRAIN)
    net.blobs["pred"].data[...] = np.arange(6).reshape(2, 3)
    from caffe_pylayer import GradientCheckError
    with pytest.raises(GradientCheckError, match=r"layer 'loss', bottom 0 \(pred\), value \d+"):
        check_gradients(net, "loss")
