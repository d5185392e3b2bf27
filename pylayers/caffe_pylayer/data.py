"""A Python data layer that loads its next batches in the background.

A data set is a plain class: constructed with the layer's parameters, it
says how many batches an epoch has (``__len__``) and loads one of them::

    class Squares:
        def __init__(self, params):
            self.batch_size = params["batch_size"]
        def __len__(self):
            return 100                        # batches per epoch
        def load_batch(self, index, rng):     # one array per top
            x = rng.random((self.batch_size, 8), dtype=np.float32)
            return x, (x ** 2).sum(axis=1, keepdims=True)

    class SquaresData(PrefetchingDataLayer):
        dataset = Squares
        param_defaults = {"batch_size": 32}

Workers (threads by default; processes with ``workers_mode: process``) load
batches ahead into a bounded queue while Caffe computes (Caffe releases the
GIL while it does). ``forward`` copies the next batch into the tops, in an
order fixed by the seed: batch ``order[k]`` of each epoch, where ``order`` is
``range(len(dataset))``, shuffled per epoch when ``shuffle`` is true, and
split among the solver ranks (``self.rank`` of ``self.world_size``: rank r
takes positions r, r + world_size, ...). ``rng`` is a NumPy generator seeded
by (seed + rank, epoch, index), for augmentation that repeats with the seed.

Parameters in ``param_str`` besides the data set's own:

- ``prefetch`` (4): batches loaded ahead, at most;
- ``workers`` (1): how many threads or processes load them;
- ``workers_mode`` (``thread``): or ``process``, for loaders that hold the GIL
  (pure Python); the data set class must then be importable by its module
  name, and its parameters picklable;
- ``start_method`` (``spawn``): ``fork``, ``forkserver`` or ``spawn``, for
  process workers;
- ``seed`` (0), ``shuffle`` (false).
"""
from __future__ import annotations

import logging
import multiprocessing
import pickle
import queue
import signal
import threading
import traceback
import weakref
from collections import deque
from typing import Any, Sequence

import numpy as np

from caffe_pylayer.base import PythonLayer

log = logging.getLogger(__name__)

PREFETCH_DEFAULTS = {"prefetch": 4, "workers": 1, "workers_mode": "thread",
                     "start_method": "spawn", "seed": 0, "shuffle": False}
_POLL_SECONDS = 0.5  # how often a waiting forward checks that its workers live


class DataLoadError(RuntimeError):
    """A data set's ``load_batch`` failed, returned a bad batch, or its worker died."""


def batch_order(num_batches: int, epoch: int, *, seed: int, shuffle: bool, rank: int = 0,
                world_size: int = 1) -> np.ndarray:
    """The batch indices that rank ``rank`` loads in ``epoch``, in order.

    Every rank draws the same permutation (it depends on the seed and epoch
    only) and takes every ``world_size``-th position from its own: the ranks'
    indices are disjoint and together are the whole epoch.
    """
    order = np.arange(num_batches)
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(num_batches)
    return order[rank::world_size]


def _load(dataset: Any, index: int, rng_seed: Sequence[int], num_tops: int) -> tuple:
    """Load one batch and check it: a tuple of float32 arrays, one per top,
    with equal first (batch) dimensions. Raises DataLoadError saying what is
    wrong, naming no layer (the caller adds it)."""
    batch = dataset.load_batch(index, np.random.default_rng(list(rng_seed)))
    if isinstance(batch, np.ndarray) or not isinstance(batch, (tuple, list)):
        batch = (batch,)
    if len(batch) != num_tops:
        raise DataLoadError(f"load_batch({index}) returned {len(batch)} arrays for "
                            f"{num_tops} tops")
    arrays = [_top_array(index, top, item) for top, item in enumerate(batch)]
    shapes = [a.shape for a in arrays]
    if len({s[0] for s in shapes}) > 1:
        raise DataLoadError(f"load_batch({index}) returned arrays whose first (batch) "
                            f"dimensions disagree: shapes {shapes}")
    return tuple(arrays)


# Array kinds a top can take: bool, signed and unsigned integers, floats.
# NumPy turns None, strings and other objects into object or string arrays
# (and float32 would turn None into NaN): those are refused.
_NUMERIC_KINDS = "biuf"


def _top_array(index: int, top: int, item: Any) -> np.ndarray:
    """One top's array of a batch, as float32; DataLoadError if it is not numbers."""
    what = f"load_batch({index}) returned a {type(item).__name__}"
    try:
        array = np.asarray(item)
    except (TypeError, ValueError):  # ragged nested sequences
        raise DataLoadError(f"{what} for top {top}, not an array of numbers") from None
    if array.dtype.kind not in _NUMERIC_KINDS:
        if isinstance(item, np.ndarray):
            what += f" of dtype {array.dtype}"
        raise DataLoadError(f"{what} for top {top}, not an array of numbers")
    if array.ndim == 0:
        raise DataLoadError(f"{what} for top {top}, a scalar: a batch needs a first "
                            f"(batch) axis")
    return np.ascontiguousarray(array, dtype=np.float32)


class WorkerError(Exception):
    """Stands for an exception of a worker process that could not be pickled.

    Its class is named after the original's type; its message is the
    original's, and its ``__cause__`` carries the worker's traceback.
    """


class RemoteTraceback(Exception):
    """The traceback text of an exception raised in a worker process."""

    def __str__(self) -> str:
        return f"\n\nin the worker process:\n{self.args[0]}"


def _error_message(error: BaseException) -> tuple:
    """An exception as a worker process sends it: the exception itself where it
    survives pickling, else its type's name and message; and its traceback."""
    text = traceback.format_exc()
    try:
        pickle.loads(pickle.dumps(error))
        return ("error", error, text)
    except Exception:  # noqa: BLE001 (anything can fail while pickling)
        return ("error-unpicklable", (type(error).__name__, str(error)), text)


def _rebuilt(outcome: tuple) -> BaseException:
    """The exception a worker process sent, its traceback as its cause."""
    kind, payload, text = outcome
    if kind == "error":
        error = payload
    else:
        name, message = payload
        error = type(name, (WorkerError,), {"__module__": __name__})(message)
    error.__cause__ = RemoteTraceback(text)
    return error


def _process_worker(connection, dataset_class, params, num_tops) -> None:
    """A worker process: load the batches the layer asks for, in the order asked."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    try:
        dataset = dataset_class(params)
    except BaseException as error:  # noqa: BLE001 (reported to the layer)
        connection.send(_error_message(error))
        return
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError):  # the layer or its process went away
            return
        if task is None:
            return
        index, rng_seed = task
        try:
            connection.send(("ok", _load(dataset, index, rng_seed, num_tops)))
        except BaseException as error:  # noqa: BLE001
            connection.send(_error_message(error))


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class _ThreadWorker:
    """Loads batches in a thread, sharing the layer's data set object."""

    def __init__(self, name: str, dataset: Any, num_tops: int) -> None:
        self.name = name
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = threading.Event()
        # The thread holds the data set, queues and event, never the layer: the
        # layer can be freed (and stop it) while the thread works.
        self._thread = threading.Thread(target=self._run, name=name, daemon=True,
                                        args=(dataset, num_tops, self._tasks, self._results,
                                              self._stopping))
        self._thread.start()

    @staticmethod
    def _run(dataset: Any, num_tops: int, tasks: queue.SimpleQueue,
             results: queue.SimpleQueue, stopping: threading.Event) -> None:
        # After stop(), the batch in progress ends and no queued one starts.
        while (task := tasks.get()) is not None and not stopping.is_set():
            index, rng_seed = task
            try:
                results.put(("ok", _load(dataset, index, rng_seed, num_tops)))
            except BaseException as error:  # noqa: BLE001 (re-raised by the layer)
                results.put(("error", error))

    def submit(self, index: int, rng_seed: Sequence[int]) -> None:
        self._tasks.put((index, rng_seed))

    def result(self) -> tuple:
        return self._results.get()

    def stop(self) -> None:
        """Returns at once; the thread ends when the batch in progress does."""
        self._stopping.set()
        self._tasks.put(None)  # wakes a thread that waits for a task


class _ProcessWorker:
    """Loads batches in a process with its own data set object."""

    def __init__(self, name: str, context, dataset_class: type, params: dict,
                 num_tops: int) -> None:
        self.name = name
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_process_worker, name=name, daemon=True,
                                        args=(child, dataset_class, params, num_tops))
        self._process.start()
        child.close()

    def submit(self, index: int, rng_seed: Sequence[int]) -> None:
        try:
            self._connection.send((index, rng_seed))
        except OSError:
            raise self._died() from None

    def result(self) -> tuple:
        try:
            while not self._connection.poll(_POLL_SECONDS):
                if not self._process.is_alive() and not self._connection.poll():
                    raise self._died()
            return self._connection.recv()
        except (EOFError, OSError):
            raise self._died() from None

    def _died(self) -> DataLoadError:
        self._process.join(timeout=5)
        return DataLoadError(f"worker process {self.name} (pid {self._process.pid}) died: "
                             f"{_exit_status(self._process.exitcode)}")

    def stop(self) -> None:
        """Ends the process now: what it loads is not wanted any more."""
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(timeout=5)
        if self._process.is_alive():  # SIGTERM blocked by the data set's code
            self._process.kill()
            self._process.join()
        self._connection.close()


def _exit_status(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _stop_all(workers: list) -> None:
    for worker in workers:
        worker.stop()


class PrefetchingDataLayer(PythonLayer):
    """A data layer whose batches are loaded ahead by background workers.

    Subclasses set ``dataset`` to a data set class (see the module's
    docstring) and may set ``param_defaults`` for its parameters; the
    prefetching parameters (``PREFETCH_DEFAULTS``) are accepted as well. The
    layer has no bottoms and one top per array of a batch. A batch whose
    shapes differ from the last one's reshapes the tops.
    """

    num_bottoms = 0
    dataset: type | None = None

    def setup(self, bottom: Sequence[Any], top: Sequence[Any]) -> None:
        if self.param_defaults is not None:
            self.param_defaults = {**PREFETCH_DEFAULTS, **self.param_defaults}
        super().setup(bottom, top)
        self.params = {**PREFETCH_DEFAULTS, **self.params}
        if self.dataset is None:
            raise self.config_error("set the class attribute 'dataset' to a data set class")
        p = self.params
        for key in ("prefetch", "workers"):
            if not isinstance(p[key], int) or p[key] < 1:
                raise self.config_error(f"{key} must be a positive integer, got {p[key]!r}")
        if p["workers_mode"] not in ("thread", "process"):
            raise self.config_error(f"workers_mode must be 'thread' or 'process', "
                                    f"got {p['workers_mode']!r}")
        methods = multiprocessing.get_all_start_methods()
        if p["workers_mode"] == "process" and p["start_method"] not in methods:
            raise self.config_error(f"start_method {p['start_method']!r} is not one of "
                                    f"this platform's {methods}")
        self.rank = getattr(self, "rank", 0)            # set by Caffe before setup
        self.world_size = getattr(self, "world_size", 1)
        self._num_tops = len(top)
        self._workers = self._start_workers()
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)
        self._pending: deque = deque()   # (index, worker) in flight, in order
        self._position = 0                # batches this rank has asked for so far
        self._epoch_order: tuple[int, np.ndarray] | None = None
        self._current: tuple | None = None
        for _ in range(p["prefetch"]):
            self._request_next()

    def _start_workers(self) -> list:
        p, name = self.params, self.layer_name or type(self).__name__
        if p["workers_mode"] == "thread":
            data = self.dataset(self.params)
            self._batches_per_epoch = self._length(data)
            return [_ThreadWorker(f"{name}-loader-{i}", data, self._num_tops)
                    for i in range(p["workers"])]
        # The main process needs the length too; workers build their own copy.
        self._batches_per_epoch = self._length(self.dataset(self.params))
        context = multiprocessing.get_context(p["start_method"])
        return [_ProcessWorker(f"{name}-loader-{i}", context, self.dataset, dict(self.params),
                               self._num_tops) for i in range(p["workers"])]

    def _length(self, data: Any) -> int:
        length = len(data)
        mine = len(batch_order(length, 0, seed=0, shuffle=False, rank=self.rank,
                               world_size=self.world_size))
        if mine == 0:
            raise self.config_error(f"the data set has {length} batches, too few for rank "
                                    f"{self.rank} of {self.world_size}")
        return length

    def _request_next(self) -> None:
        p = self.params
        per_rank = len(batch_order(self._batches_per_epoch, 0, seed=0, shuffle=False,
                                   rank=self.rank, world_size=self.world_size))
        epoch, offset = divmod(self._position, per_rank)
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            self._epoch_order = (epoch, batch_order(
                self._batches_per_epoch, epoch, seed=p["seed"], shuffle=p["shuffle"],
                rank=self.rank, world_size=self.world_size))
        index = int(self._epoch_order[1][offset])
        worker = self._workers[self._position % len(self._workers)]
        worker.submit(index, (p["seed"] + self.rank, epoch, index))
        self._pending.append((index, worker))
        self._position += 1

    def _next_batch(self) -> tuple:
        index, worker = self._pending.popleft()
        outcome = worker.result()
        self._request_next()
        if outcome[0] == "ok":
            return outcome[1]
        # A thread sends its exception, with its traceback; a process what
        # _error_message made of it.
        error = outcome[1] if len(outcome) == 2 else _rebuilt(outcome)
        raise DataLoadError(f"{self.describe()}: batch {index} (worker {worker.name}): "
                            f"{_describe(error)}") from error

    def reshape(self, bottom: Sequence[Any], top: Sequence[Any]) -> None:
        if self._current is None:
            self._current = self._next_batch()
        for blob, array in zip(top, self._current):
            if tuple(blob.shape) != array.shape:
                blob.reshape(*array.shape)

    def forward(self, bottom: Sequence[Any], top: Sequence[Any]) -> None:
        if self._current is None:  # forward without a reshape (net._forward of this layer)
            self.reshape(bottom, top)
        for blob, array in zip(top, self._current):
            blob.data[...] = array
        self._current = None

    def backward(self, top: Sequence[Any], propagate_down: Sequence[bool],
                 bottom: Sequence[Any]) -> None:
        pass  # no bottoms

    def close(self) -> None:
        """Stop the workers now (they also stop when the layer is freed or at exit)."""
        self._finalizer()
