#!/usr/bin/env python3
"""conda-forge's global pinning, with its migrations, for conda-build.

conda-smithy (conda-forge's feedstock tool) merges the global pinning with the
migrations a feedstock is in (CUDA 13.0, Python 3.14: `operation: key_add`,
which appends their values to the pinning's lists) and sets
CF_CUDA_ENABLED=True for recipes that use compiler('cuda'). conda-build alone
does neither; this script stands in for that part of conda-smithy. Run it with
the Python that has conda-build.

PINNING_DIR holds conda-forge's conda_build_config.yaml and, in migrations/,
the migrations this recipe is in (cuda130.yaml, python314.yaml), as a
feedstock's .ci_support/migrations/ does; every one found there is applied.

Every command takes --subdir (linux-64, the default, or linux-aarch64, which
conda-forge cross-compiles on linux-64): the platform whose selectors and
builds are evaluated.

    conda_pinning.py write PINNING_DIR OUT.yaml [--python V] [--cuda V]
        the merged variant config, for conda-build -m; --python / --cuda keep
        only that value of the key and of every key zipped with it (as
        conda-build's --variants cannot: it must name every zipped key)
    conda_pinning.py migrations MIGRATIONS_DIR OUT_DIR
        copy the migrations this recipe is in from a conda-forge-pinning
        install's migrations folder into OUT_DIR: the key_add ones, not
        paused, whose primary key is one the recipe builds over (python,
        cuda_compiler_version), whatever their file names
    conda_pinning.py variants CONFIG.yaml RECIPE_DIR
        the builds conda-build would make with CONFIG, one line each (name,
        version, build string); rendered, no channel needed
    conda_pinning.py requests PINNING_DIR RECIPE_DIR
        for every Python x CUDA value of the pinning: narrow, render, and
        check that exactly one caffe of that Python and CUDA comes out
    conda_pinning.py check PINNING_DIR RECIPE_DIR [--seeds 0 1 2 3 4]
        render every variant with conda-build's own renderer, once per
        PYTHONHASHSEED (conda-build merges zip_keys through sets, so an
        ambiguous merge shows under some seeds only), check the recipe's
        invariants in each, and that every seed gives the same builds
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

CUDA_HOST = {"cuda-version", "cuda-cudart-dev", "libcublas-dev", "libcurand-dev", "libcudnn-dev"}
SUBDIRS = ("linux-64", "linux-aarch64")
# Where conda-forge builds each subdir: linux-aarch64 is cross-compiled.
BUILD_SUBDIR = "linux-64"


class Failed(Exception):
    """A check failed; the message says which and why."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def config_for(subdir: str):
    from conda_build.config import Config

    platform, arch = subdir.split("-")
    return Config(platform=platform, arch=arch)


def load(path: Path, subdir: str = "linux-64") -> dict:
    """One variant file, its selectors evaluated for subdir as conda-build does."""
    from conda_build.variants import parse_config_file

    if not path.is_file():
        raise Failed(f"pinning file not found: {path}")
    return parse_config_file(str(path), config_for(subdir))


def merged(pinning_dir: Path, subdir: str = "linux-64") -> dict:
    """The global pinning with every key_add migration of pinning_dir/migrations."""
    os.environ["CF_CUDA_ENABLED"] = "True"  # what conda-smithy sets for compiler('cuda')
    config = load(pinning_dir / "conda_build_config.yaml", subdir)
    migrations = pinning_dir / "migrations"
    require(migrations.is_dir(), f"no migrations folder in {pinning_dir}")
    for migration_file in sorted(migrations.glob("*.yaml")):
        migration = load(migration_file, subdir)
        operation = (migration.get("__migrator") or {}).get("operation")
        require(operation == "key_add",
                f"{migration_file.name}: migration operation {operation!r} is not key_add")
        for key, values in migration.items():
            if key in ("__migrator", "migrator_ts", "zip_keys"):
                continue
            config[key] = list(config.get(key, [])) + [v for v in values]
    return config


def python_of(value) -> str:
    """'3.12.* *_cpython' -> '3.12': the pinning's spelling of a Python."""
    return str(value).split()[0].removesuffix(".*")


KEYS = {"python": python_of, "cuda_compiler_version": str}


def narrowed(config: dict, key: str, wanted: str) -> dict:
    """config with only the entries of key equal to wanted, kept in step with
    the keys zipped to it."""
    spell = KEYS[key]
    values = [spell(v) for v in config.get(key, [])]
    keep = [i for i, value in enumerate(values) if value == wanted]
    require(bool(keep), f"the pinning has no {key} {wanted} (it has: {', '.join(values) or 'none'})")
    group = next((z for z in config.get("zip_keys", []) if key in z), [key])
    config = dict(config)
    for zipped in group:
        if zipped in config:
            config[zipped] = [config[zipped][i] for i in keep]
    return config


def copy_migrations(source: Path, out: Path) -> None:
    require(source.is_dir(), f"no migrations folder {source}")
    out.mkdir(parents=True, exist_ok=True)
    taken = []
    for path in sorted(source.glob("*.yaml")):
        migrator = (yaml.safe_load(path.read_text()) or {}).get("__migrator") or {}
        if (migrator.get("operation") == "key_add" and not migrator.get("paused")
                and migrator.get("primary_key") in KEYS):
            (out / path.name).write_bytes(path.read_bytes())
            taken.append(f"{path.name} ({migrator['primary_key']})")
    print("    migrations: " + (", ".join(taken) or "none"))


def write(pinning_dir: Path, out: Path, python: str | None = None, cuda: str | None = None,
          subdir: str = "linux-64") -> None:
    config = merged(pinning_dir, subdir)
    if subdir != BUILD_SUBDIR:
        # As conda-smithy writes a cross job's config: conda-build runs on the
        # build subdir and takes the target from this key.
        config["target_platform"] = [subdir]
    if python:
        config = narrowed(config, "python", python)
    if cuda:
        config = narrowed(config, "cuda_compiler_version", cuda)
    out.write_text(yaml.safe_dump(config, sort_keys=False))


def names(deps) -> set[str]:
    return {str(d).split()[0] for d in deps or []}


def check_output(tag: str, name: str, meta: dict, gpu: bool, subdir: str) -> None:
    """The invariants of one rendered output."""
    reqs = meta.get("requirements") or {}
    build, host, run = (names(reqs.get(k)) for k in ("build", "host", "run"))
    constrained = names(reqs.get("run_constrained"))
    test = meta.get("test") or {}
    string = meta["build"]["string"]
    number = int(meta["build"]["number"])
    require(bool(test.get("commands") or test.get("imports")), f"[{tag}] {name} has no tests")
    require(string.startswith("cuda" if gpu else "cpu_"), f"[{tag}] {name} build string {string}")
    require(number >= 200 if gpu else number < 200,
            f"[{tag}] {name} build number {number}: CUDA builds must rank above CPU builds")
    if name == "caffe":
        require("leveldb" in run, f"[{tag}] caffe does not run-require leveldb")
        require(not {"libblas", "openblas", "libopenblas"} & host,
                f"[{tag}] caffe links CBLAS only, yet its host has {sorted(host)}")
        require("libprotobuf" in build and "protobuf" not in build,
                f"[{tag}] protoc comes from libprotobuf in build: {sorted(build)}")
        cross = {f"cross-python_{subdir}", "python", "numpy"}
        if subdir != BUILD_SUBDIR:  # conda-forge's cross-compiled Python extensions
            require(cross <= build, f"[{tag}] a cross build lacks {sorted(cross - build)} in build")
        else:
            require(not cross & build, f"[{tag}] a native build has {sorted(cross & build)} in build")
        if gpu:
            require("__cuda" in run, f"[{tag}] caffe does not require __cuda")
            require(CUDA_HOST <= host, f"[{tag}] caffe lacks {sorted(CUDA_HOST - host)}")
            require(f"cuda-nvcc_{subdir}" in build, f"[{tag}] caffe lacks compiler('cuda') for {subdir}")
            require("caffe-cpu" in constrained, f"[{tag}] a CUDA caffe must constrain caffe-cpu away")
            ignored = (meta["build"].get("ignore_run_exports_from") or [])
            require(not any("nvcc" in str(i) for i in ignored),
                    f"[{tag}] run_exports of compiler('cuda') are ignored: {ignored}")
        else:
            cuda = {d for d in build | host | run | constrained if "cuda" in d} - {"caffe-cpu", "caffe-gpu"}
            require(not cuda, f"[{tag}] CPU caffe mentions CUDA: {sorted(cuda)}")
            require("caffe-gpu" in constrained, f"[{tag}] a CPU caffe must constrain caffe-gpu away")
    if name == "caffe-pylayer":
        # pin_subpackage(exact=True) resolves only when the build is
        # finalized; ci/check_packages.py checks the exact pin in the package.
        require("caffe" in run, f"[{tag}] caffe-pylayer does not require caffe")
        require((meta.get("about") or {}).get("license_file"),
                f"[{tag}] caffe-pylayer has no license file of its own")


def render_all(config_file: Path, recipe_dir: Path, subdir: str = "linux-64") -> list[dict]:
    """Every variant's outputs, rendered by conda-build (no channel needed)."""
    from contextlib import redirect_stdout

    from conda_build import api

    platform, arch = BUILD_SUBDIR.split("-")  # the target comes from the config's target_platform
    os.environ["CF_CUDA_ENABLED"] = "True"
    with redirect_stdout(sys.stderr):  # conda-build's progress lines
        rendered = api.render(str(recipe_dir), variant_config_files=[str(config_file)],
                              bypass_env_check=True, finalize=False, platform=platform, arch=arch)
    outputs = []
    for metadata, _, _ in rendered:
        variant = metadata.config.variant
        cuda = str(variant.get("cuda_compiler_version", "None"))
        python = str(variant.get("python", "")).split()[0]
        tag = f"{subdir}, cuda {cuda}, python {python}"
        name = metadata.name()
        meta = metadata.meta
        check_output(tag, name, meta, cuda != "None", subdir)
        outputs.append({"cuda": cuda, "python": python, "name": name,
                        "version": metadata.version(), "string": meta["build"]["string"]})
    return outputs


def check_builds(outputs: list[dict]) -> str:
    """Every expected variant is there, once, with distinct build strings."""
    combos = {(o["cuda"], o["python"]) for o in outputs if o["name"] == "caffe"}
    cudas = sorted({c for c, _ in combos})
    pythons = sorted({p for _, p in combos}, key=lambda v: tuple(int(x) for x in v.rstrip(".*").split(".")))
    require(cudas == ["12.9", "13.0", "None"], f"CUDA variants are {cudas}, want None, 12.9, 13.0")
    require(len(combos) == len(cudas) * len(pythons),
            f"{len(combos)} caffe builds for {len(cudas)} CUDA x {len(pythons)} Python variants")
    keys = [(o["name"], o["version"], o["string"]) for o in outputs]
    require(len(keys) == len(set(keys)), "two variants give the same package file name")
    for name in ("caffe-cpu", "caffe-gpu", "caffe-pylayer"):
        require(any(o["name"] == name for o in outputs), f"no variant has the output {name}")
    return (f"{len(outputs)} outputs: caffe x {len(combos)} (CUDA {', '.join(cudas)} x Python "
            f"{', '.join(p.rstrip('.*') for p in pythons)}), caffe-cpu, caffe-gpu, caffe-pylayer")


def variants(config_file: Path, recipe_dir: Path, subdir: str) -> list[dict]:
    outputs = render_all(config_file, recipe_dir, subdir)
    for o in outputs:
        print(f"{o['name']} {o['version']} {o['string']}")
    return outputs


def requests(pinning_dir: Path, recipe_dir: Path, work: Path, subdir: str) -> None:
    """Each Python x CUDA request of the pinning renders exactly one caffe, of
    that Python and CUDA."""
    config = merged(pinning_dir, subdir)
    pythons = [python_of(v) for v in config["python"]]
    cudas = [str(v) for v in config["cuda_compiler_version"]]
    for python in pythons:
        for cuda in cudas:
            config_file = work / f"pinning-{subdir}-{python}-{cuda}.yaml"
            write(pinning_dir, config_file, python, cuda, subdir)
            caffes = [o for o in render_all(config_file, recipe_dir, subdir) if o["name"] == "caffe"]
            got = [(o["python"].removesuffix(".*"), o["cuda"]) for o in caffes]
            require(got == [(python, cuda)],
                    f"python {python}, cuda {cuda}: {len(caffes)} caffe builds rendered {got}")
            print(f"    {subdir}, python {python}, cuda {cuda}: caffe {caffes[0]['string']}")


def check(pinning_dir: Path, recipe_dir: Path, seeds: list[int], work: Path, subdir: str) -> None:
    config_file = work / f"conda-forge-pinning-merged-{subdir}.yaml"
    write(pinning_dir, config_file, subdir=subdir)
    results = {}
    for seed in seeds:
        env = dict(os.environ, PYTHONHASHSEED=str(seed))
        done = subprocess.run([sys.executable, __file__, "render", str(config_file), str(recipe_dir),
                               "--subdir", subdir],
                              env=env, capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            errors = [l for l in done.stderr.splitlines() if "Error" in l or "error" in l]
            raise Failed(f"PYTHONHASHSEED={seed}: " + (lines[-1] if lines else "")
                         + ("; ".join(errors[-2:]) or done.stderr[-600:]))
        results[seed] = json.loads(lines[-1])
        print(f"    {subdir}, PYTHONHASHSEED={seed}: {results[seed]['summary']}")
    # caffe-cpu/-gpu do not depend on Python, so conda-build renders them once
    # for whichever Python it meets first: compare the others.
    builds = {seed: sorted(b for b in r["builds"] if b[0] in ("caffe", "caffe-pylayer"))
              for seed, r in results.items()}
    require(len({json.dumps(b) for b in builds.values()}) == 1,
            "the rendered caffe / caffe-pylayer builds differ between hash seeds")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("write")
    p.add_argument("pinning", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--python")
    p.add_argument("--cuda")
    p = sub.add_parser("migrations")
    p.add_argument("source", type=Path)
    p.add_argument("out", type=Path)
    p = sub.add_parser("variants")
    p.add_argument("config", type=Path)
    p.add_argument("recipe", type=Path)
    p = sub.add_parser("requests")
    p.add_argument("pinning", type=Path)
    p.add_argument("recipe", type=Path)
    p.add_argument("--work", type=Path, default=Path("."))
    p = sub.add_parser("check")
    p.add_argument("pinning", type=Path)
    p.add_argument("recipe", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--work", type=Path, default=Path("."))
    p = sub.add_parser("render")  # one seed, in a child process of check
    p.add_argument("config", type=Path)
    p.add_argument("recipe", type=Path)
    for name in ("write", "variants", "requests", "check", "render"):
        sub.choices[name].add_argument("--subdir", choices=SUBDIRS, default="linux-64")
    args = parser.parse_args()
    try:
        if args.command == "write":
            write(args.pinning, args.out, args.python, args.cuda, args.subdir)
        elif args.command == "migrations":
            copy_migrations(args.source, args.out)
        elif args.command == "variants":
            variants(args.config, args.recipe, args.subdir)
        elif args.command == "requests":
            requests(args.pinning, args.recipe, args.work, args.subdir)
        elif args.command == "check":
            check(args.pinning, args.recipe, args.seeds, args.work, args.subdir)
        else:
            outputs = render_all(args.config, args.recipe, args.subdir)
            print(json.dumps({"summary": check_builds(outputs),
                              "builds": [[o["name"], o["version"], o["string"]] for o in outputs]}))
    except Failed as failure:
        print(f"conda_pinning.py: {failure}", file=sys.stderr if args.command != "render" else sys.stdout)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
