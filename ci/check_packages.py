#!/usr/bin/env python3
"""Check what the built .conda files hold (run by ci/test --conda).

Opens caffe, its selector (caffe-cpu or caffe-gpu) and caffe-pylayer as
conda-build wrote them and checks:
- caffe has libcaffe, the tools and example commands, the headers, pycaffe and
  Caffe's license, and nothing else in site-packages; its version sorts above
  conda-forge's caffe 1.0, so a solver prefers it whatever the build number;
- caffe-pylayer holds exactly caffe_pylayer (with its example), pyloss and their
  metadata, its own license, and pins caffe to the exact build;
- every shared library that an ELF file of caffe needs (its NEEDED entries) is
  either in the package, in the C runtime, or in a package that caffe depends
  on, and every dependency of caffe is needed by a library or by pycaffe's
  Python imports (none unused); a CUDA caffe links cudart, cuBLAS, cuRAND,
  cuDNN and NCCL, a CPU caffe none of them;
- no file holds the build's host or build prefix where conda will not replace
  it at install time.

    check_packages.py PACKAGE_DIR CHANNEL...   (CHANNEL: where the dependencies came from)
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from conda.models.version import VersionOrder
from conda_package_streaming.extract import extract

# What pycaffe imports or needs at run time without linking it, and what CUDA
# builds require without linking it (the driver's CUDA, the toolkit version).
NOT_LINKED = {"python", "python_abi", "numpy", "six", "protobuf", "scipy", "scikit-image",
              "__cuda", "cuda-version"}
# What a CUDA build's libcaffe must link: without them CMake quietly built for the CPU.
CUDA_LINKED = {"cuda-cudart", "libcublas", "libcurand", "libcudnn", "nccl"}
# The C and C++ runtime: glibc (__glibc), libgcc, libstdcxx.
RUNTIME = {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1",
           "ld-linux-x86-64.so.2", "libgcc_s.so.1", "libstdc++.so.6"}
RUNTIME_PACKAGES = {"__glibc", "libgcc", "libstdcxx"}
CAFFE_TOOLS = ["caffe", "caffe-train", "classify", "detect", "draw_net", "convert_imageset",
               "compute_image_mean",
               "extract_features", "upgrade_net_proto_text", "upgrade_solver_proto_text"]


class Failed(Exception):
    pass


def require(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def unpack(package: Path, into: Path) -> tuple[dict, list[str], Path]:
    """index.json, the file list and the folder of one package."""
    folder = into / package.name
    extract(str(package), str(folder))
    index = json.loads((folder / "info" / "index.json").read_text())
    paths = json.loads((folder / "info" / "paths.json").read_text())["paths"]
    return index, paths, folder


def find(packages: Path, name: str) -> Path:
    matches = sorted(packages.glob(f"linux-64/{name}-[0-9]*.conda"))
    require(len(matches) == 1, f"want one {name} package in {packages}/linux-64, found "
                               f"{[m.name for m in matches]}")
    return matches[0]


def needed(path: Path) -> list[str]:
    done = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True)
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", done.stdout)


def is_elf(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"\x7fELF"


def soname_providers(channels: list[Path]) -> dict[str, str]:
    """Which package of the channels holds lib/<soname>."""
    providers = {}
    for channel in channels:
        repodata = json.loads((channel / "linux-64" / "repodata.json").read_text())
        for filename, record in {**repodata.get("packages", {}),
                                 **repodata.get("packages.conda", {})}.items():
            with tempfile.TemporaryDirectory() as tmp:
                _, paths, _ = unpack(channel / "linux-64" / filename, Path(tmp))
            for entry in paths:
                if re.fullmatch(r"lib/[^/]+\.so(\.[^/]+)?", entry["_path"]):
                    providers.setdefault(Path(entry["_path"]).name, record["name"])
    return providers


def check_caffe(index: dict, paths: list[dict], folder: Path, providers: dict[str, str]) -> str:
    files = {p["_path"] for p in paths}
    site = next((f.split("/caffe/")[0] for f in files if f.endswith("/caffe/_caffe.so")), None)
    require(site is not None, "caffe has no pycaffe (site-packages/caffe/_caffe.so)")
    for wanted in ["lib/libcaffe.so", f"{site}/caffe/__init__.py", f"{site}/caffe/proto/caffe_pb2.py",
                   "include/caffe/blob.hpp"]:
        require(wanted in files, f"caffe lacks {wanted}")
    for tool in CAFFE_TOOLS:
        require(f"bin/{tool}" in files, f"caffe lacks the command bin/{tool}")
    require(VersionOrder(index["version"]) > VersionOrder("1.0"),
            f"caffe {index['version']} does not sort above conda-forge's caffe 1.0")
    license_text = (folder / "info" / "licenses" / "LICENSE").read_text()
    require("Berkeley" in license_text or "BVLC" in license_text or "Caffe" in license_text,
            "caffe's info/licenses/LICENSE is not Caffe's license")
    strays = sorted(f for f in files if f.startswith(site + "/") and not f.startswith(site + "/caffe/"))
    require(not strays, f"caffe holds files in site-packages besides pycaffe: {strays[:5]}")

    # caffe_pb2.py was generated by the libprotobuf caffe was built with (its
    # run_export pins it): the Python runtime must be no older than that.
    built_with = next((d.split()[1] for d in index["depends"] if d.split()[0] == "libprotobuf"), "")
    floor = re.match(r">=([0-9.]+)", built_with)
    require(floor is not None, f"caffe has no 'libprotobuf >=...' dependency: {index['depends']}")
    require(f"protobuf >={floor.group(1)}" in index["depends"],
            f"caffe does not pin the protobuf runtime to 'protobuf >={floor.group(1)}' "
            f"(caffe_pb2.py's generator): {index['depends']}")

    depends = {d.split()[0] for d in index["depends"]}
    used: set[str] = set()
    own = {Path(f).name for f in files}
    elves = [folder / f for f in files if (folder / f).is_file() and not (folder / f).is_symlink()
             and is_elf(folder / f)]
    require(elves, "caffe holds no ELF files")
    for elf in elves:
        for soname in needed(elf):
            if soname in own:
                continue
            if soname in RUNTIME:
                used.add("libstdcxx" if soname == "libstdc++.so.6" else
                         "libgcc" if soname == "libgcc_s.so.1" else "__glibc")
                continue
            provider = providers.get(soname)
            require(provider is not None,
                    f"{elf.relative_to(folder)} needs {soname}, which no package provides")
            require(provider in depends,
                    f"{elf.relative_to(folder)} needs {soname} from {provider}, "
                    f"which is not a run dependency of caffe ({sorted(depends)})")
            used.add(provider)
    cuda = index["build"].startswith("cuda")
    if cuda:
        require("share/caffe/cuda-architectures.txt" in files, "caffe lacks share/caffe/cuda-architectures.txt")
        require(CUDA_LINKED <= used, f"a CUDA caffe links none of {sorted(CUDA_LINKED - used)}")
    else:
        require(not used & CUDA_LINKED, f"a CPU caffe links {sorted(used & CUDA_LINKED)}")
    unused = depends - used - NOT_LINKED - RUNTIME_PACKAGES
    require(not unused, f"caffe depends on {sorted(unused)}, which no library of it links")
    missing_runtime = {u for u in used if u in RUNTIME_PACKAGES} - depends
    require(not missing_runtime, f"caffe links the runtime of {sorted(missing_runtime)} without depending on it")
    return (f"caffe: {len(files)} files, {len(elves)} ELF files; {len(depends)} run dependencies, "
            f"{len(used - RUNTIME_PACKAGES)} of them linked (leveldb "
            f"{'included' if 'leveldb' in used else 'MISSING'})")


def check_pylayer(index: dict, paths: list[dict], folder: Path, caffe_index: dict) -> str:
    files = sorted(p["_path"] for p in paths)
    allowed = re.compile(r"lib/python3\.\d+/site-packages/("
                         r"caffe_pylayer/(example/)?[a-z_]+\.py|"
                         r"caffe_pylayer/(example/)?__pycache__/[a-z_]+\.cpython-3\d+\.pyc|"
                         r"caffe_pylayer/example/[a-z]+\.prototxt|"
                         r"pyloss\.py|__pycache__/pyloss\.cpython-3\d+\.pyc|"
                         r"caffe_pylayer-[\d.]+\.dist-info/[A-Za-z_.]+(/[A-Za-z_.]+)?)")
    strays = [f for f in files if not allowed.fullmatch(f)]
    require(not strays, f"caffe-pylayer holds unexpected files: {strays[:8]}")
    for module in ("caffe_pylayer/__init__.py", "pyloss.py", "caffe_pylayer/example/net.prototxt",
                   "caffe_pylayer/example/solver.prototxt", "caffe_pylayer/example/squares.py"):
        require(any(f.endswith("site-packages/" + module) for f in files), f"caffe-pylayer lacks {module}")
    require(any(".dist-info/METADATA" in f for f in files), "caffe-pylayer has no dist-info metadata")
    require((folder / "info" / "licenses").is_dir(), "caffe-pylayer has no license file")
    pin = f"caffe {caffe_index['version']} {caffe_index['build']}"
    require(pin in index["depends"], f"caffe-pylayer does not pin '{pin}': {index['depends']}")
    return f"caffe-pylayer: {len(files)} files, pins {pin}"


def check_prefix(package: Path, paths: list[dict], folder: Path, build_root: bytes) -> None:
    """The host and build prefixes of the build appear only as the host prefix
    placeholder of files that conda rewrites at install time. (Source paths of
    the work folder, which glog messages carry, are not prefixes.)"""
    prefix = re.compile(re.escape(build_root) + rb"/[^/\x00]+/(_h_env[^/\x00]*|_build_env)")
    for entry in paths:
        path = folder / entry["_path"]
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        found = prefix.findall(data)
        if not found:
            continue
        require(b"_build_env" not in found,
                f"{package.name}: {entry['_path']} holds the build prefix (_build_env)")
        placeholder = entry.get("prefix_placeholder", "").encode()
        replaced = data.count(placeholder) if placeholder else 0
        require(len(found) == replaced,
                f"{package.name}: {entry['_path']} holds the host prefix {len(found) - replaced} "
                "time(s) where conda will not replace it")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", type=Path, help="conda-build's output folder")
    parser.add_argument("channels", type=Path, nargs="+", help="channels the dependencies came from")
    parser.add_argument("--croot", type=Path, required=True, help="conda-build's build root")
    args = parser.parse_args()
    try:
        providers = soname_providers(args.channels)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            caffe = unpack(find(args.packages, "caffe"), work)
            print("    " + check_caffe(*caffe, providers))
            name = "caffe-gpu" if caffe[0]["build"].startswith("cuda") else "caffe-cpu"
            selector = unpack(find(args.packages, name), work)
            pin = f"caffe {caffe[0]['version']} {caffe[0]['build']}"
            require(selector[0]["depends"] == [pin], f"{name} depends on {selector[0]['depends']}")
            require(not [p for p in selector[1]], f"{name} holds files: {selector[1][:3]}")
            pylayer = unpack(find(args.packages, "caffe-pylayer"), work)
            print("    " + check_pylayer(*pylayer, caffe[0]))
            # The build's folders: the host prefix (its placeholder), the build
            # prefix and the work folder all live under the build root.
            build_root = str(args.croot.resolve()).encode()
            for package, (_, paths, folder) in [(find(args.packages, "caffe"), caffe),
                                                (find(args.packages, "caffe-pylayer"), pylayer)]:
                check_prefix(package, paths, folder, build_root)
            print("    no unreplaced build paths in caffe, caffe-pylayer")
    except Failed as failure:
        print(f"check_packages.py: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
