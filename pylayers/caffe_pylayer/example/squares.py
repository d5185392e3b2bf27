"""The example's data: y = sum(x ** 2) per row, with x uniform in [-1, 1)."""
from caffe_pylayer import PrefetchingDataLayer


class Squares:
    def __init__(self, params):
        self.batch_size = params["batch_size"]

    def __len__(self):                  # batches per epoch
        return 100

    def load_batch(self, index, rng):   # one array per top: x, y
        x = rng.uniform(-1, 1, (self.batch_size, 4))
        return x, (x ** 2).sum(axis=1, keepdims=True)


class SquaresData(PrefetchingDataLayer):
    dataset = Squares
    param_defaults = {"batch_size": 64}
