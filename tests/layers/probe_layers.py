"""Python layers used only by the tests: they report or misbehave on purpose."""
import json
import sys

import caffe
import numpy


class EnvProbeLayer(caffe.Layer):
    """Copies its bottom; at setup writes the interpreter's prefix and NumPy's
    location to the file named by param_str."""

    def setup(self, bottom, top):
        with open(self.param_str, "w") as out:
            json.dump({"prefix": sys.prefix, "numpy": numpy.__file__,
                       "layer_name": getattr(self, "layer_name", None)}, out)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff


class RaisingLayer(EnvProbeLayer):
    """Raises in forward, as a buggy user layer would."""

    def setup(self, bottom, top):
        pass

    def forward(self, bottom, top):
        raise ValueError("RaisingLayer: deliberate failure in forward")


class ClassicEuclideanLossLayer(caffe.Layer):
    """Caffe's original example layer: it ignores the top diff (loss_weight)."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        self.diff = numpy.zeros_like(bottom[0].data, dtype=numpy.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = numpy.sum(self.diff ** 2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if propagate_down[i]:
                sign = 1 if i == 0 else -1
                bottom[i].diff[...] = sign * self.diff / bottom[i].num


class LegacyParamStrLayer(EnvProbeLayer):
    """Reads param_str_, pycaffe's name for it before 2016 (Faster R-CNN's layers do)."""

    def setup(self, bottom, top):
        self.received = self.param_str_
