"""Shared by the benchmarks: a caffe.Net from a NetSpec."""
from __future__ import annotations

import os
import tempfile

import caffe


def train_net(spec: caffe.NetSpec) -> caffe.Net:
    """The spec's net in the TRAIN phase, with force_backward (every bottom gets a diff)."""
    proto = spec.to_proto()
    proto.force_backward = True
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(str(proto))
    try:
        return caffe.Net(f.name, caffe.TRAIN)
    finally:
        os.unlink(f.name)
