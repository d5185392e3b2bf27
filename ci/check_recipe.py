#!/usr/bin/env python3
"""Check the recipe's source section without conda (run by ci/test).

Reads recipe/meta.yaml's source section (ci/recipe.py) and checks: the given
tarball has the recipe's sha256, every URL names the same file; the patch list
is patches/ in order, each line's comment equal to the patch header's
Upstream-Status, and (--apply) every patch applies with no fuzz in that order;
the extra sources exist; the overlay (the source with no folder, copied over
Caffe's tree) adds files only: none is in the tarball or changed by a patch;
caffe-pylayer's license file is the project's and its version
pylayers/pyproject.toml's. The same checks run on the self-contained
folder of ci/export-recipe. The variants and outputs are checked with
conda-build's own renderer (ci/conda_pinning.py).

    check_recipe.py [--recipe DIR] [--tarball FILE [--apply]]
"""
from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recipe  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


class CheckFailed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def check_patch_list(recipe_dir: Path, meta: dict, tarball: Path | None) -> int:
    # Each patch's Upstream-Status line is the fact; meta.yaml's comment repeats it.
    text = (recipe_dir / "meta.yaml").read_text()
    for match in re.finditer(r"(\S*patches/\d{4}-\S+\.patch)[ \t]*(?:#[ \t]*(.*))?", text):
        path, comment = recipe_dir / match.group(1), (match.group(2) or "").strip()
        if path.is_file():
            status = recipe.upstream_status(path)
            check(comment == status, f"meta.yaml says {comment!r} after {path.name}, "
                                     f"its header says Upstream-Status: {status!r}")
    listed = [recipe_dir / p for p in meta["source"][0]["patches"]]
    on_disk = sorted(listed[0].parent.glob("*.patch")) if listed else []
    check([p.resolve() for p in listed] == [p.resolve() for p in on_disk],
          f"meta.yaml lists {[p.name for p in listed]} but patches/ holds "
          f"{[p.name for p in on_disk]}")
    for i, path in enumerate(listed, start=1):
        check(path.name.startswith(f"{i:04d}-"), f"patch {path.name} is not number {i:04d}")
        head = path.read_text()
        check(head.startswith("From ") and "\nSubject: [PATCH" in head,
              f"{path.name} is not a git format-patch mail")
    if tarball is not None:
        with tempfile.TemporaryDirectory() as tree:
            subprocess.run(["tar", "-xzf", str(tarball), "-C", tree], check=True)
            for path in listed:
                applied = subprocess.run(
                    ["patch", "-d", tree, "-p1", "--fuzz=0", "--forward", "--batch", "-i", str(path)],
                    capture_output=True, text=True)
                check(applied.returncode == 0,
                      f"{path.name} does not apply with no fuzz:\n{applied.stdout}{applied.stderr}")
    return len(listed)


def check_overlay(recipe_dir: Path, meta: dict, tarball: Path | None) -> int:
    """The overlay's files are new files of Caffe's tree: conda-build copies
    them over it and would replace one of Caffe's without a word."""
    overlays = [s for s in meta["source"][1:] if "folder" not in s]
    check(len(overlays) == 1, f"{len(overlays)} sources without a folder, not one overlay")
    root = recipe_dir / overlays[0]["path"]
    files = {str(f.relative_to(root)) for f in root.rglob("*") if f.is_file()}
    check(files, f"the overlay {root} holds no files")
    for name in meta["source"][0]["patches"]:
        touched = set(re.findall(r"^\+\+\+ b/(\S+)", (recipe_dir / name).read_text(), re.M))
        check(not touched & files, f"{Path(name).name} changes overlay files "
                                   f"{sorted(touched & files)}: change them in the overlay")
    if tarball is not None:
        listing = subprocess.run(["tar", "-tzf", str(tarball)], capture_output=True, text=True,
                                 check=True).stdout.split()
        upstream = {f.removeprefix("./") for f in listing}
        check(not upstream & files, f"the overlay replaces Caffe's {sorted(upstream & files)}")
    return len(files)


def check_recipe(recipe_dir: Path, tarball: Path | None, apply: bool) -> str:
    meta = recipe.render(recipe.DEFAULT_VARIANT, recipe_dir)  # raises on invalid Jinja or YAML
    source = meta["source"][0]
    if tarball is not None:
        actual = hashlib.sha256(tarball.read_bytes()).hexdigest()
        check(source["sha256"] == actual, f"{tarball.name} has sha256 {actual}, "
                                          f"the recipe says {source['sha256']}")
    names = {url.rsplit("/", 1)[-1] for url in source["url"]}
    check(len(names) == 1, f"the source URLs name different files: {sorted(names)}")
    for extra in meta["source"][1:]:
        check((recipe_dir / extra["path"]).is_dir(), f"source path {extra['path']} is missing")
    pylayer_license = recipe_dir / meta["source"][1]["path"] / "LICENSE"
    check(pylayer_license.read_text() == (REPO / "LICENSE").read_text(),
          f"{pylayer_license} is not the project's LICENSE")
    # The pylayers version is pyproject.toml's. meta.yaml repeats it: reading the
    # file from Jinja (load_file_data) makes conda-build fetch the source to render.
    pyproject = tomllib.loads((recipe_dir / meta["source"][1]["path"] / "pyproject.toml").read_text())
    output = next(o for o in meta["outputs"] if o["name"] == "caffe-pylayer")
    check(str(output["version"]) == pyproject["project"]["version"],
          f"meta.yaml builds caffe-pylayer {output['version']}, pylayers/pyproject.toml says "
          f"{pyproject['project']['version']}")
    patches = check_patch_list(recipe_dir, meta, tarball if apply else None)
    overlay = check_overlay(recipe_dir, meta, tarball)
    return f"source {names.pop()}, {patches} patches, {overlay} overlay files"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=recipe.RECIPE_DIR)
    parser.add_argument("--tarball", type=Path, help="the source tarball: its sha256 must be the recipe's")
    parser.add_argument("--apply", action="store_true", help="also apply every patch to the tarball")
    args = parser.parse_args()
    if args.apply and args.tarball is None:
        parser.error("--apply needs --tarball")
    try:
        print(f"    {args.recipe}: {check_recipe(args.recipe, args.tarball, args.apply)}: ok")
    except CheckFailed as failure:
        print(f"recipe check failed ({args.recipe}): {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
