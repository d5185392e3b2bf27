"""ci/patches: the queue's round trip and its refusals (run by ci/test).

CAFFE_SOURCE_TARBALL names the verified source tarball.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO / "ci" / "patches"
TARBALL = os.environ.get("CAFFE_SOURCE_TARBALL", "")
pytestmark = pytest.mark.skipif(not Path(TARBALL).is_file(), reason="CAFFE_SOURCE_TARBALL names no file")
GIT_ENV = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def run(*args: str | Path, root: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(TOOL), "--root", str(root), *map(str, args)],
                          capture_output=True, text=True)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], env=GIT_ENV, check=True,
                          capture_output=True, text=True).stdout


def copy_root(tmp_path: Path) -> Path:
    """patches/ and recipe/meta.yaml as this repository has them."""
    root = tmp_path / "root"
    shutil.copytree(REPO / "patches", root / "patches")
    (root / "recipe").mkdir()
    shutil.copy2(REPO / "recipe" / "meta.yaml", root / "recipe" / "meta.yaml")
    return root


def tree_bytes(root: Path) -> dict[str, bytes]:
    files = sorted((root / "patches").glob("*.patch")) + [root / "recipe" / "meta.yaml"]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def queue(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("queue") / "caffe"
    done = run("import", folder, "--tarball", TARBALL)
    assert done.returncode == 0, done.stderr
    return folder


def test_import_makes_one_commit_per_listed_patch(queue):
    subjects = git(queue, "log", "--reverse", "--format=%s", "upstream..HEAD").splitlines()
    patches = sorted((REPO / "patches").glob("*.patch"))
    assert len(subjects) == len(patches) > 0
    assert subjects[0] == "io: use protobuf's one-argument SetTotalBytesLimit"
    message = git(queue, "log", "-1", "--format=%B", "upstream..HEAD")
    assert message.count("Upstream-Status: ") == 1


def test_round_trip_without_edits_changes_no_byte(queue, tmp_path):
    root = copy_root(tmp_path)
    done = run("export", queue, root=root)
    assert done.returncode == 0, done.stderr
    assert tree_bytes(root) == tree_bytes(REPO)


def test_a_new_commit_becomes_the_next_patch_and_list_line(queue, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(queue, work, symlinks=True)
    (work / "NEWS").write_text("a new file\n")
    git(work, "add", "NEWS")
    git(work, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q",
        "-m", "news: add a file\n\nWhy: a test.\n\nUpstream-Status: conda-specific")
    root = copy_root(tmp_path)
    done = run("export", work, root=root)
    assert done.returncode == 0, done.stderr
    count = len(list((REPO / "patches").glob("*.patch")))
    new = root / "patches" / f"{count + 1:04d}-news-add-a-file.patch"
    assert new.is_file()
    assert f"- ../patches/{new.name}  # conda-specific\n" in (root / "recipe" / "meta.yaml").read_text()


def test_export_refuses_a_commit_without_upstream_status(queue, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(queue, work, symlinks=True)
    git(work, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q",
        "--allow-empty", "-m", "no status here")
    commit = git(work, "rev-parse", "--short=12", "HEAD").strip()
    root = copy_root(tmp_path)
    before = tree_bytes(root)
    done = run("export", work, root=root)
    assert done.returncode == 1
    assert f"commit {commit} ('no status here') has 0 Upstream-Status lines" in done.stderr
    assert tree_bytes(root) == before


def test_import_refuses_an_existing_folder_unless_told_to_replace(tmp_path):
    folder = tmp_path / "exists"
    folder.mkdir()
    done = run("import", folder, "--tarball", TARBALL)
    assert done.returncode == 1
    assert f"{folder} exists" in done.stderr and "--replace" in done.stderr
    done = run("import", folder, "--replace", "--tarball", TARBALL)
    assert done.returncode == 0, done.stderr


def test_import_names_the_patch_and_file_that_no_longer_apply(tmp_path):
    root = copy_root(tmp_path)
    first = sorted((root / "patches").glob("0001-*.patch"))[0]
    # A context line that the source does not have.
    text = first.read_text().replace(" ZeroCopyInputStream* raw_input", " ZeroCopyInputStream* other", 1)
    first.write_text(text)
    done = run("import", tmp_path / "q", "--tarball", TARBALL, root=root)
    assert done.returncode == 1
    assert f"{first.name} does not apply to src/caffe/util/io.cpp" in done.stderr
