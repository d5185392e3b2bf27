#!/usr/bin/env python3
"""Rerender a scratch feedstock with conda-smithy and check its linux-aarch64 jobs.

    rerender.py FEEDSTOCK PINNING_DIR

FEEDSTOCK holds conda-forge.yml and recipe/ (the exported recipe), as a
feedstock does. conda-smithy's own rerendering (configure_feedstock) runs on
it offline, with PINNING_DIR's conda_build_config.yaml as the pinning and its
migrations/ as the feedstock's .ci_support/migrations. Then the jobs it wrote
must say what conda-forge.yml asks: every CUDA variant for linux-64 and
linux-aarch64, the aarch64 ones cross-compiled on an x86-64 image, and their
tests kept (run under emulation). Run it with the Python that has conda-smithy
(the linter's venv).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import yaml

CUDA = ("None", "12.9", "13.0")


def rerender(feedstock: Path, pinning: Path) -> None:
    from conda_smithy import configure_feedstock

    migrations = feedstock / ".ci_support" / "migrations"
    migrations.mkdir(parents=True, exist_ok=True)
    for migration in sorted((pinning / "migrations").glob("*.yaml")):
        shutil.copy(migration, migrations)
    # Only the feedstock's README names rattler-build's version; it is not
    # installed here and no job depends on it.
    configure_feedstock.rattler_build_version = lambda: "not installed"
    configure_feedstock.main(str(feedstock), no_check_uptodate=True,
                             exclusive_config_file=str(pinning / "conda_build_config.yaml"))


def check(feedstock: Path) -> list[str]:
    problems = []
    support = feedstock / ".ci_support"
    for platform in ("linux_64", "linux_aarch64"):
        for cuda in CUDA:
            path = support / f"{platform}_cuda_compiler_version{cuda}.yaml"
            if not path.is_file():
                problems.append(f"no job {path.name}")
                continue
            config = yaml.safe_load(path.read_text())
            target = platform.replace("_", "-")
            if config.get("target_platform") != [target]:
                problems.append(f"{path.name}: target_platform {config.get('target_platform')}")
            # linux-aarch64 cross-compiles: its jobs run the x86-64 image.
            if not all("linux-anvil-x86_64" in image for image in config.get("docker_image", [""])):
                problems.append(f"{path.name}: docker_image {config.get('docker_image')}")
    workflow = (feedstock / ".github" / "workflows" / "conda-build.yml").read_text()
    for cuda in CUDA:
        if f"CONFIG: linux_aarch64_cuda_compiler_version{cuda}" not in workflow:
            problems.append(f"the workflow has no linux_aarch64 CUDA {cuda} job")
    steps = (feedstock / ".scripts" / "build_steps.sh").read_text()
    # conda-smithy adds --no-test to cross builds unless the host is linux-*
    # (test: native_and_emulated): the aarch64 tests must stay.
    if 'HOST_PLATFORM}" != linux-*' not in steps:
        problems.append("build_steps.sh skips the tests of linux-aarch64 builds")
    return problems


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    feedstock, pinning = Path(sys.argv[1]), Path(sys.argv[2])
    rerender(feedstock, pinning)
    problems = check(feedstock)
    for problem in problems:
        print(f"rerender.py: {problem}", file=sys.stderr)
    if problems:
        return 1
    jobs = sorted(p.stem for p in (feedstock / ".ci_support").glob("linux_*.yaml"))
    print(f"    conda-smithy wrote {len(jobs)} jobs: {', '.join(jobs)}; linux-aarch64 built on "
          "linux-64, its tests under emulation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
