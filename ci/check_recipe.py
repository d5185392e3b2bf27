#!/usr/bin/env python3
"""Check the conda recipe's invariants without conda (run by ci/test).

Renders recipe/meta.yaml for every variant of conda_build_config.yaml with
conda-build's Jinja helpers and line selectors (ci/recipe.py), then checks:
the source is the tarball the native build verified; the patch list is
patches/ in order, each line commented with its upstream status, and every
patch applies with no fuzz in that order; each output has a test section; GPU
variants need __cuda and the CUDA libraries, CPU variants mention no CUDA;
build strings differ between variants; caffe-pylayer pins caffe exactly.
The same checks run on the self-contained folder of ci/export-recipe.

    check_recipe.py [--recipe DIR] [--verified FILE] [--tarball FILE]
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recipe  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CUDA_HOST_DEPS = {"cuda-cudart-dev", "libcublas-dev", "libcurand-dev", "cudnn"}
UPSTREAM_STATUS = re.compile(r"#\s*(backport \S+|conda-specific|not yet upstream)")


class CheckFailed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def names(deps: list[str]) -> set[str]:
    return {str(d).split()[0] for d in deps or []}


def check_patch_list(recipe_dir: Path, meta: dict, tarball: Path | None) -> int:
    text = (recipe_dir / "meta.yaml").read_text()
    patch_lines = [line for line in text.splitlines() if re.search(r"patches/\d{4}-", line)]
    for line in patch_lines:
        check(UPSTREAM_STATUS.search(line) is not None,
              f"patch line without an upstream-status comment: {line.strip()}")
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


def check_variant(variant: dict[str, str], meta: dict, verified_sha256: str | None,
                  recipe_dir: Path) -> dict[str, str]:
    tag = ", ".join(f"{k}={v}" for k, v in variant.items())
    source = meta["source"][0]
    if verified_sha256 is not None:
        check(source["sha256"] == verified_sha256,
              f"[{tag}] sha256 {source['sha256']} is not the verified {verified_sha256}")
    for extra in meta["source"][1:]:
        check((recipe_dir / extra["path"]).is_dir(), f"[{tag}] source path {extra['path']} is missing")
    check(all(u.endswith("/caffe_1.0.0+git20180821.99bd997.orig.tar.gz") for u in source["url"]),
          f"[{tag}] a source URL names another file: {source['url']}")
    gpu = variant["cuda_compiler_version"] != "None"
    selectors = {o["name"] for o in meta["outputs"]} & {"caffe-cpu", "caffe-gpu"}
    check(selectors == {"caffe-gpu" if gpu else "caffe-cpu"},
          f"[{tag}] flavour selector outputs are {sorted(selectors)}")
    strings = {}
    for output in meta["outputs"]:
        name = output["name"]
        test = output.get("test") or {}
        check(bool(test.get("commands") or test.get("imports")), f"[{tag}] {name} has no tests")
        reqs = output.get("requirements") or {}
        build, host, run = (names(reqs.get(k)) for k in ("build", "host", "run"))
        every = build | host | run | names(reqs.get("run_constrained"))
        if name == "caffe":
            if gpu:
                check("__cuda" in run, f"[{tag}] caffe does not require __cuda")
                check(CUDA_HOST_DEPS <= host, f"[{tag}] caffe lacks {CUDA_HOST_DEPS - host}")
                check("cuda-nvcc_linux-64" in build, f"[{tag}] caffe lacks compiler('cuda')")
                check(output["build"]["string"].startswith("cuda"), f"[{tag}] GPU build string")
            else:
                cuda_deps = {d for d in every if "cuda" in d or d in CUDA_HOST_DEPS}
                check(not cuda_deps, f"[{tag}] CPU caffe mentions CUDA: {cuda_deps}")
                check(output["build"]["string"].startswith("cpu_"), f"[{tag}] CPU build string")
        if name == "caffe-pylayer":
            pins = [d for d in reqs.get("run", []) if str(d).startswith("caffe ")]
            check(len(pins) == 1 and len(pins[0].split()) == 3,
                  f"[{tag}] caffe-pylayer does not pin caffe exactly: {pins}")
        strings[name] = output["build"]["string"]
    return strings


def check_recipe(recipe_dir: Path, verified_sha256: str | None, tarball: Path | None) -> str:
    all_variants = recipe.variants(recipe_dir)
    seen: dict[tuple[str, str], dict[str, str]] = {}
    patches = 0
    for variant in all_variants:
        meta = recipe.render(variant, recipe_dir)  # raises on invalid Jinja or YAML
        for output, string in check_variant(variant, meta, verified_sha256, recipe_dir).items():
            key = (output, string)
            check(key not in seen, f"build string {string} of {output} repeats: {variant} and {seen.get(key)}")
            seen[key] = variant
        if not patches:
            patches = check_patch_list(recipe_dir, meta, tarball)
    return f"{len(all_variants)} variants, {len(seen)} distinct output builds, {patches} patches"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=recipe.RECIPE_DIR)
    parser.add_argument("--verified", type=Path, help="file with the sha256 the native build verified")
    parser.add_argument("--tarball", type=Path, help="source tarball to apply the patches to")
    args = parser.parse_args()
    verified = args.verified.read_text().split()[0] if args.verified else None
    try:
        print(f"    {args.recipe}: {check_recipe(args.recipe, verified, args.tarball)}: ok")
    except CheckFailed as failure:
        print(f"recipe check failed ({args.recipe}): {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
