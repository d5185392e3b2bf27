"""A runnable example: a prefetching Python data layer and a Python loss.

``python -m caffe_pylayer.example DIR`` writes its files into DIR (made if
missing): ``squares.py`` (the data layer), ``net.prototxt`` and
``solver.prototxt``. Then, in DIR, ``caffe train -solver solver.prototxt``
trains the net on synthetic data in about a second on one CPU core.
"""
from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

FILES = ("squares.py", "net.prototxt", "solver.prototxt")


def write_example(folder: str | Path) -> list[Path]:
    """Copy the example's files into ``folder``; refuses to overwrite any."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    targets = [folder / name for name in FILES]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise FileExistsError(f"not overwriting {', '.join(existing)}")
    source = resources.files(__name__)
    for name, target in zip(FILES, targets):
        with resources.as_file(source / name) as path:
            shutil.copyfile(path, target)
    return targets
