#!/usr/bin/env python3
"""Run the examples of the README and the guides (run by ci/test, ci/gpu-run).

Every fenced block of a document carries one mark on the line before it:

    <!-- file: NAME -->      the block is written to NAME (a layer module, a
                             prototxt) for the blocks after it
    <!-- runnable -->        a ```sh block runs in bash -euo pipefail, a
                             ```python block in python
    <!-- runnable: gpu -->   the same, only where a GPU is visible (--gpu);
                             skipped elsewhere, saying so
    <!-- not run: WHY -->    never run; WHY says what it needs (a GPU
                             machine with several GPUs, conda-forge) or that
                             it is output, not an example

A block without a mark is an error naming its file and line, so no example
goes unrun by oversight. Each document runs in a new empty folder, its blocks
in order, with the commands of the env's bin folder first on PATH. A failing
block names its file and line; its output goes to LOGS.

    doc_examples.py --bin ENV/bin --logs LOGS [--gpu | --gpu-only] FILE...
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

MARK = re.compile(r"^<!-- (file: (?P<file>\S+)|runnable(?P<gpu>: gpu)?|not run: (?P<why>.+)) -->$")
FENCE = re.compile(r"^```(?P<lang>\S*)$")


@dataclass
class Block:
    doc: Path
    line: int        # of the opening fence, 1-based
    lang: str
    text: str
    file: str | None = None
    run: bool = False
    gpu: bool = False
    why: str | None = None

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


class DocError(Exception):
    pass


def blocks_of(doc: Path) -> list[Block]:
    lines = doc.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j] == "```"), None)
        if end is None:
            raise DocError(f"{doc}:{i + 1}: the block never closes")
        block = Block(doc, i + 1, fence.group("lang"), "\n".join(lines[i + 1:end]) + "\n")
        mark = MARK.match(lines[i - 1].strip()) if i else None
        if mark is None:
            raise DocError(f"{block.where}: a block with no mark; put <!-- runnable -->, "
                           "<!-- file: NAME --> or <!-- not run: WHY --> on the line before it")
        if mark.group("file"):
            block.file = mark.group("file")
        elif mark.group("why"):
            block.why = mark.group("why")
        else:
            if block.lang not in ("sh", "python"):
                raise DocError(f"{block.where}: only ```sh and ```python blocks can be runnable")
            block.run, block.gpu = True, bool(mark.group("gpu"))
        blocks.append(block)
        i = end + 1
    return blocks


def run_doc(doc: Path, bin_dir: Path, logs: Path, gpu: bool, gpu_only: bool) -> tuple[int, list[str]]:
    """Run a document's blocks; returns how many ran and the skip reasons."""
    blocks = blocks_of(doc)
    if gpu_only and not any(b.gpu for b in blocks):
        return 0, []
    # As a user who activated the env types them: its commands first, Caffe's
    # log at its default level, no PYTHONPATH.
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for name in ("PYTHONPATH", "GLOG_minloglevel"):
        env.pop(name, None)
    ran, skipped = 0, []
    with tempfile.TemporaryDirectory(prefix="doc-example-") as folder:
        for block in blocks:
            if block.file:
                (Path(folder) / block.file).write_text(block.text)
                continue
            if block.why:
                skipped.append(f"{block.where}: not run: {block.why}")
                continue
            if block.gpu and not gpu:
                skipped.append(f"{block.where}: skipped: needs a GPU, none visible (ci/gpu-run runs it)")
                continue
            if gpu_only and not block.gpu:
                continue
            python = next(p for p in (bin_dir / "python", bin_dir / "python3", Path(sys.executable))
                          if p.exists())   # a GPU bundle has only python3
            command = (["bash", "-euo", "pipefail", "-c", block.text] if block.lang == "sh"
                       else [str(python), "-c", block.text])
            log = logs / f"doc-{doc.stem}-{block.line}.log"
            with open(log, "w") as out:
                done = subprocess.run(command, cwd=folder, env=env, stdout=out,
                                      stderr=subprocess.STDOUT, timeout=900)
            if done.returncode != 0:
                tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
                raise DocError(f"{block.where}: the example failed with exit status "
                               f"{done.returncode} (log: {log})\n{tail}")
            ran += 1
    return ran, skipped


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", type=Path, required=True, help="the env's bin folder")
    parser.add_argument("--logs", type=Path, required=True)
    parser.add_argument("--gpu", action="store_true", help="also run the GPU blocks")
    parser.add_argument("--gpu-only", action="store_true", help="run only the GPU blocks")
    parser.add_argument("docs", type=Path, nargs="+")
    args = parser.parse_args(argv)
    args.logs.mkdir(parents=True, exist_ok=True)
    total = 0
    try:
        for doc in args.docs:
            ran, skipped = run_doc(doc, args.bin.resolve(), args.logs.resolve(),
                                   args.gpu or args.gpu_only, args.gpu_only)
            total += ran
            print(f"    {doc}: {ran} examples passed")
            for reason in skipped:
                print(f"      {reason}")
    except DocError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if total == 0:
        print("error: no example ran", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
