#!/usr/bin/env python3
"""Write the README's runnable command blocks out as scripts (run by ci/test).

A block is runnable when the line before its ```sh fence is
`<!-- runnable -->`; the others need what a test machine lacks (conda-forge,
a GPU). Each block becomes OUT/block-N.sh, in README order; the number of
blocks is printed.

    readme_blocks.py README.md OUT
"""
from __future__ import annotations

import sys
from pathlib import Path

MARK = "<!-- runnable -->"


def runnable_blocks(text: str) -> list[str]:
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() == MARK:
            if i + 1 >= len(lines) or lines[i + 1].strip() != "```sh":
                raise ValueError(f"README line {i + 1}: {MARK} must stand right before a ```sh block")
            end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                raise ValueError(f"README line {i + 2}: the block never closes")
            blocks.append("\n".join(lines[i + 2:end]) + "\n")
    return blocks


def main(argv: list[str]) -> int:
    readme, out = Path(argv[1]), Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    blocks = runnable_blocks(readme.read_text())
    for n, block in enumerate(blocks, 1):
        (out / f"block-{n}.sh").write_text(block)
    print(len(blocks))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
