"""Python layers for the tests of layer lifetime, reshape retries, phase and rank."""
import numpy as np

import caffe
from caffe_pylayer import PythonLayer


class KeepsBottomsLayer(caffe.Layer):
    """Copies its bottom, keeping the bottom and top blobs it was given."""

    def setup(self, bottom, top):
        self.kept = (bottom[0], top[0])

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        kept_bottom, kept_top = self.kept
        kept_top.data[...] = kept_bottom.data

    def backward(self, top, propagate_down, bottom):
        pass


class RaisingSetupLayer(caffe.Layer):
    """Raises in setup, after making a buffer that would leak with the layer."""

    def setup(self, bottom, top):
        self.buffer = np.ones(1 << 18, dtype=np.float32)  # 1 MiB
        raise ValueError(f"RaisingSetupLayer '{self.layer_name}': deliberate failure in setup")


class PickyReshapeLayer(PythonLayer):
    """Copies its bottom; its reshape raises while the class says 'refuse'."""

    num_bottoms = num_tops = 1
    reshape_when_shapes_change = True
    refuse = False
    reshapes = 0

    def reshape(self, bottom, top):
        type(self).reshapes += 1
        if type(self).refuse:
            raise ValueError(f"{self.describe()}: refuses shape {tuple(bottom[0].shape)}")
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        pass


class ConfigByPhaseLayer(caffe.Layer):
    """The region-proposal layers' idiom: configuration keyed by str(self.phase)."""

    cfg = {"TRAIN": 2.0, "TEST": 3.0}

    def setup(self, bottom, top):
        self.scale = self.cfg[str(self.phase)]
        self.seen = {"str": str(self.phase), "int": int(self.phase),
                     "is_train": self.phase == caffe.TRAIN, "is_test": self.phase == caffe.TEST,
                     "indexed": ["train", "test"][self.phase],
                     "rank": self.rank, "world_size": self.world_size}

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.scale * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        pass


class AffineLayer(PythonLayer):
    """top = w * bottom + b per channel (axis 1), with learnable w and b."""

    num_bottoms = num_tops = 1
    param_defaults = {"wrong_weight_gradient": False}

    def setup(self, bottom, top):
        super().setup(bottom, top)
        channels = bottom[0].shape[1]
        self.blobs.add_blob(channels)
        self.blobs.add_blob(channels)
        self.blobs[0].data[...] = np.linspace(0.5, 1.5, channels)
        self.blobs[1].data[...] = np.linspace(-1, 1, channels)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def _broadcast(self, values, ndim):
        return values.reshape((1, -1) + (1,) * (ndim - 2))

    def forward(self, bottom, top):
        x = bottom[0].data
        top[0].data[...] = (self._broadcast(self.blobs[0].data, x.ndim) * x
                            + self._broadcast(self.blobs[1].data, x.ndim))

    def backward(self, top, propagate_down, bottom):
        x, dy = bottom[0].data, top[0].diff
        axes = tuple(i for i in range(x.ndim) if i != 1)
        weight_gradient = (dy * x).sum(axis=axes)
        if self.params["wrong_weight_gradient"]:
            weight_gradient = weight_gradient * 2
        self.blobs[0].diff[...] += weight_gradient
        self.blobs[1].diff[...] += dy.sum(axis=axes)
        if propagate_down[0]:
            bottom[0].diff[...] = self._broadcast(self.blobs[0].data, x.ndim) * dy
