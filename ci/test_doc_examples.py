"""ci/doc_examples.py: marks, files, failures that name their line (run by ci/test)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parent / "doc_examples.py"


def run(tmp_path: Path, text: str, *flags: str) -> subprocess.CompletedProcess:
    doc = tmp_path / "guide.md"
    doc.write_text(text)
    return subprocess.run([sys.executable, str(TOOL), "--bin", str(Path(sys.executable).parent),
                           "--logs", str(tmp_path / "logs"), *flags, str(doc)],
                          capture_output=True, text=True, cwd=tmp_path)


def test_a_file_block_is_there_for_the_blocks_after_it(tmp_path):
    done = run(tmp_path, "<!-- file: data.txt -->\n```\n42\n```\n\n<!-- runnable -->\n```python\n"
                         "assert open('data.txt').read() == '42\\n'\n```\n\n<!-- runnable -->\n"
                         "```sh\ngrep -q 42 data.txt\n```\n")
    assert done.returncode == 0, done.stderr
    assert "guide.md: 2 examples passed" in done.stdout


def test_a_block_without_a_mark_is_an_error_naming_its_line(tmp_path):
    done = run(tmp_path, "# Guide\n\n```sh\necho hi\n```\n")
    assert done.returncode == 1
    assert "guide.md:3: a block with no mark" in done.stderr


def test_a_failing_example_names_its_file_and_line(tmp_path):
    done = run(tmp_path, "<!-- runnable -->\n```sh\ntrue\n```\n\n<!-- runnable -->\n```sh\n"
                         "echo broken; exit 3\n```\n")
    assert done.returncode == 1
    assert "guide.md:7: the example failed with exit status 3" in done.stderr
    assert "broken" in done.stderr


def test_gpu_and_not_run_blocks_are_skipped_saying_why(tmp_path):
    done = run(tmp_path, "<!-- runnable -->\n```sh\ntrue\n```\n\n<!-- runnable: gpu -->\n```sh\n"
                         "exit 1\n```\n\n<!-- not run: needs conda-forge -->\n```sh\nexit 1\n```\n")
    assert done.returncode == 0, done.stderr
    assert "guide.md:7: skipped: needs a GPU" in done.stdout
    assert "guide.md:12: not run: needs conda-forge" in done.stdout
