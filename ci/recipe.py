#!/usr/bin/env python3
"""Read recipe/meta.yaml's source section without conda, for the native build.

conda-build renders meta.yaml in two passes: Jinja2 with its own helpers
(compiler(), stdlib(), pin_subpackage(), environ, the variant's keys), then
line selectors (`# [expr]`) evaluated against the variant. This script does
both for one CPU variant, so that ci/build and ci/check_recipe.py take the
tarball, its sha256 and the patch list from the one recipe. Every variant is
rendered by conda-build's own renderer (ci/conda_pinning.py, ci/test --conda).

    recipe.py source             URLs, sha256 and patches, one per line
    recipe.py render [KEY=VALUE] the rendered meta.yaml of one variant
    recipe.py patches            each patch's number, upstream status and subject
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import jinja2
import yaml

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipe"
SELECTOR = re.compile(r"^(?P<line>.*?)\s*#\s*\[(?P<expr>.+)\]\s*(#.*)?$")


# The variant the source section is read from; it does not depend on it.
# libprotobuf: a host pin from conda-forge's pinning that the requirements
# name; its value does not matter here. The platforms: a native linux-64 build,
# as conda-build defines them for rendering.
DEFAULT_VARIANT = {"cuda_compiler_version": "None", "python": "3.11", "libprotobuf": "0",
                   "target_platform": "linux-64", "build_platform": "linux-64"}


def _selector_namespace(variant: dict[str, str]) -> dict[str, object]:
    py = variant.get("python", "3.11")
    namespace: dict[str, object] = {
        "linux": True, "linux64": True, "osx": False, "win": False, "unix": True,
        "x86_64": True, "aarch64": False, "py": int(py.replace(".", "")),
    }
    namespace.update(variant)
    return namespace


def apply_selectors(text: str, variant: dict[str, str]) -> str:
    """Drop lines whose `# [expr]` is false, as conda-build's select_lines does."""
    namespace = _selector_namespace(variant)
    kept = []
    for line in text.splitlines():
        match = SELECTOR.match(line)
        if match is None:
            kept.append(line)
        elif eval(match.group("expr"), {"__builtins__": {}}, dict(namespace)):  # noqa: S307
            kept.append(match.group("line"))
    return "\n".join(kept) + "\n"


def _compiler():
    names = {"c": "gcc", "cxx": "gxx", "cuda": "cuda-nvcc", "fortran": "gfortran"}

    # Jinja runs before selectors, so compiler('cuda') is called in CPU
    # variants too; conda-build names a package there as well.
    def compiler(language: str) -> str:
        return f"{names[language]}_linux-64"

    return compiler


def render(variant: dict[str, str], recipe_dir: Path = RECIPE_DIR) -> dict:
    """Render meta.yaml for one variant and parse it."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    first_pass: dict[str, object] = {}

    def pin_subpackage(name: str, exact: bool = False, max_pin: str = "x.x") -> str:
        """conda-build's pin: exact gives 'name version build_string' of that output."""
        version = first_pass.get("version", "0")
        if exact:
            return f"{name} {version} {first_pass.get('strings', {}).get(name, 'unrendered')}"
        return f"{name} >={version}"

    context: dict[str, object] = dict(variant)
    context.update(
        compiler=_compiler(),
        stdlib=lambda language: "sysroot_linux-64 2.17",
        pin_subpackage=pin_subpackage,
        pin_compatible=lambda name, **kw: name,
        environ=dict(os.environ),  # conda-build's `environ`
        CONDA_PY=variant.get("python", "3.11").replace(".", ""),
        PY_VER=variant.get("python", "3.11"),
        PKG_HASH="1234567",
        RECIPE_DIR=str(recipe_dir),
    )
    template = env.from_string((recipe_dir / "meta.yaml").read_text())
    # A first pass finds the version and build strings for pin_subpackage, as
    # conda-build renders outputs again once it knows them.
    first = yaml.safe_load(apply_selectors(template.render(**context), variant))
    first_pass["version"] = str(first["package"]["version"])
    first_pass["strings"] = {o["name"]: o["build"]["string"] for o in first.get("outputs", [])}
    return yaml.safe_load(apply_selectors(template.render(**context), variant))


def upstream_status(patch: Path) -> str:
    """The Upstream-Status line of a patch's message, the one home of that fact."""
    message = patch.read_text().partition("\n---\n")[0]
    found = re.findall(r"^Upstream-Status: (.+)$", message, re.M)
    if len(found) != 1:
        raise ValueError(f"{patch.name}: {len(found)} Upstream-Status lines in its message, not one")
    return found[0].strip()


def patch_lines(meta: dict, recipe_dir: Path = RECIPE_DIR) -> list[str]:
    lines = []
    for name in meta["source"][0]["patches"]:
        path = recipe_dir / name
        subject = re.search(r"^Subject: \[PATCH[^]]*\] (.+(?:\n .+)*)", path.read_text(), re.M).group(1)
        subject = " ".join(subject.split())  # a long subject folds onto further lines
        lines.append(f"{path.name[:4]}  {upstream_status(path):42}  {subject}")
    return lines


def source_lines(meta: dict) -> list[str]:
    """The tarball's URLs, sha256 and patch paths (relative to the repo)."""
    tarball = meta["source"][0]
    urls = tarball["url"] if isinstance(tarball["url"], list) else [tarball["url"]]
    lines = [f"url {u}" for u in urls]
    lines.append(f"sha256 {tarball['sha256']}")
    for patch in tarball.get("patches", []):
        lines.append(f"patch {os.path.normpath(Path('recipe') / patch)}")
    return lines


def _parse_overrides(args: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in args)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "source":
        print("\n".join(source_lines(render(DEFAULT_VARIANT))))
    elif command == "patches":
        print("\n".join(patch_lines(render(DEFAULT_VARIANT))))
    elif command == "render":
        chosen = {**DEFAULT_VARIANT, **_parse_overrides(rest)}
        print(yaml.safe_dump(render(chosen), sort_keys=False))
    else:
        print(f"recipe.py: unknown command {command!r}; see --help", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
