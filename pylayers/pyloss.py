"""The classic module name for Python loss layers.

Prototxts written for Caffe's examples say
``python_param { module: 'pyloss' layer: 'EuclideanLossLayer' }``; this module
keeps them working. New nets can name ``caffe_pylayer`` instead.
"""
from caffe_pylayer.losses import EuclideanLossLayer

__all__ = ["EuclideanLossLayer"]
