"""Tested Python layers for Caffe, base classes for writing them (a prefetching data
layer among them), a gradient checker."""
from importlib import metadata as _metadata

from caffe_pylayer.base import LayerConfigError, PythonLayer, parse_param_str
from caffe_pylayer.data import DataLoadError, PrefetchingDataLayer, batch_order
from caffe_pylayer.gradcheck import GradientCheckError, check_gradients
from caffe_pylayer.losses import EuclideanLossLayer

# The version is pyproject.toml's, as installed.
__version__ = _metadata.version("caffe-pylayer")
__all__ = [
    "DataLoadError",
    "EuclideanLossLayer",
    "GradientCheckError",
    "LayerConfigError",
    "PrefetchingDataLayer",
    "PythonLayer",
    "batch_order",
    "check_gradients",
    "parse_param_str",
]
