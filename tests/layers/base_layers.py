"""A user-style layer built on caffe_pylayer.PythonLayer, for the base-class tests."""
from caffe_pylayer import PythonLayer


class ScaleLayer(PythonLayer):
    """top = scale * bottom[0] + offset; a second bottom is accepted and ignored."""

    num_bottoms = (1, 2)
    num_tops = 1
    param_defaults = {"scale": 1.0, "offset": 0.0}

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.params["scale"] * bottom[0].data + self.params["offset"]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = self.params["scale"] * top[0].diff
