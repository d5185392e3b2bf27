"""Tested Python layers for Caffe, a base class for writing them, a gradient checker."""
from caffe_pylayer.base import LayerConfigError, PythonLayer, parse_param_str
from caffe_pylayer.gradcheck import GradientCheckError, check_gradients
from caffe_pylayer.losses import EuclideanLossLayer

__version__ = "1.0.0"
__all__ = [
    "EuclideanLossLayer",
    "GradientCheckError",
    "LayerConfigError",
    "PythonLayer",
    "check_gradients",
    "parse_param_str",
]
