"""Tested Python layers for Caffe, a base class for writing them, a gradient checker."""
from importlib import metadata as _metadata

from caffe_pylayer.base import LayerConfigError, PythonLayer, parse_param_str
from caffe_pylayer.gradcheck import GradientCheckError, check_gradients
from caffe_pylayer.losses import EuclideanLossLayer

# The version is pyproject.toml's, as installed.
__version__ = _metadata.version("caffe-pylayer")
__all__ = [
    "EuclideanLossLayer",
    "GradientCheckError",
    "LayerConfigError",
    "PythonLayer",
    "check_gradients",
    "parse_param_str",
]
