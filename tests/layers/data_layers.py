"""Prefetching data layers and data sets for the tests (tests/test_data_layer.py)."""
import os
import signal
import time

import numpy as np

from caffe_pylayer import PrefetchingDataLayer


class IndexData:
    """Batch i: x filled with i (shape batch x 3), y = i (batch x 1); 6 batches."""

    def __init__(self, params):
        self.batch = params["batch"]
        self.fail_at = params["fail_at"]
        self.mode = params["bad"]
        self.delay = params["delay"]

    def __len__(self):
        return 6

    def load_batch(self, index, rng):
        if self.delay:
            time.sleep(self.delay)   # a slow disk
        if index == self.fail_at:
            if self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.mode == "unpicklable":
                raise UnpicklableError(f"no sample {index}")
            raise KeyError(f"no sample {index}")
        x = np.full((self.batch, 3), index, dtype=np.float32)
        y = np.full((self.batch, 1), index, dtype=np.float64)  # converted to float32
        if self.mode == "count":
            return (x,)
        if self.mode == "shapes":
            return x, y[:1]
        if self.mode == "type":
            return x, "label"
        if self.mode == "none":       # a one-top layer's batch
            return None
        if self.mode == "none-label":
            return x, None
        if self.mode == "objects":
            return x, np.array([[object()]] * self.batch, dtype=object)
        if self.mode == "scalar":
            return x, 1.0
        if self.mode == "grow":
            return np.full((index + 1, 3), index, np.float32), np.full((index + 1, 1), index)
        if self.mode == "noise":
            return x + rng.random(x.shape, dtype=np.float32), y
        return x, y


class UnpicklableError(Exception):
    """An exception whose arguments do not survive pickling (a lock)."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = __import__("threading").Lock()


class IndexDataLayer(PrefetchingDataLayer):
    dataset = IndexData
    param_defaults = {"batch": 2, "fail_at": -1, "bad": "", "delay": 0.0}


class RegressionData:
    """y = x w + 0.3 for a fixed w; each batch's x is drawn from its own rng."""

    def __init__(self, params):
        self.w = np.random.default_rng(5).standard_normal((8, 2))
        self.delay = params["delay"]

    def __len__(self):
        return 16

    def load_batch(self, index, rng):
        if self.delay:
            time.sleep(self.delay)   # releases the GIL, as file reads do
        x = rng.standard_normal((64, 8))
        return x, x @ self.w + 0.3


class RegressionDataLayer(PrefetchingDataLayer):
    dataset = RegressionData
    param_defaults = {"delay": 0.0}
