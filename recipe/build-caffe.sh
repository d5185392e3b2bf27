#!/usr/bin/env bash
# Build and install Caffe with the Python layer into $PREFIX.
#
# Written against conda-build's variables, so conda-build runs it as is; ci/build
# exports the same variables to run it natively (a venv plays $PREFIX):
#   PREFIX SRC_DIR PYTHON SP_DIR CPU_COUNT CMAKE_ARGS   (always)
#   cuda_compiler_version   "None" or unset: CPU flavour; "12.4", "12.9", "13.0": CUDA flavour
#   CUDA_HOME               CUDA toolkit root, NCCL included, when it is not in
#                           $PREFIX (native build: ci/build makes one from wheels)
# and optionally, to build fewer GPU architectures than the defaults below:
#   CAFFE_CUDA_ARCH_BIN     CUDA architectures, space-separated ("90")
#   CAFFE_CUDA_ARCH_PTX     architecture to also embed as PTX ("" for none)
set -euo pipefail

build_dir="${SRC_DIR}/build"

# --- Python: Caffe's FindPythonLibs-era CMake must be told which interpreter,
# headers and libpython to use, or it picks the system's. Natively the
# interpreter that runs the build is the target's and answers for itself. A
# cross build (conda-forge's linux-aarch64 on linux-64) runs the build
# machine's, so the target's headers, libpython and NumPy are named from
# $PREFIX (patch 0054 keeps the NumPy named), and protoc is the build
# machine's, from $BUILD_PREFIX.
cross_args=()
if [[ "${CONDA_BUILD_CROSS_COMPILATION:-0}" == 1 ]]; then
  python_version="${PY_VER}"
  python_include="${PREFIX}/include/python${PY_VER}"
  python_library="${PREFIX}/lib/libpython${PY_VER}.so"
  numpy_metadata=("${SP_DIR}"/numpy-*.dist-info/METADATA)
  cross_args=(
    -DNUMPY_INCLUDE_DIR="${SP_DIR}/numpy/_core/include"
    -DNUMPY_VERSION="$(sed -n 's/^Version: //p' "${numpy_metadata[0]}")"
    -DPROTOBUF_PROTOC_EXECUTABLE="${BUILD_PREFIX}/bin/protoc"
  )
  echo "build-caffe.sh: cross build for ${target_platform:-?} on ${build_platform:-?}: Python ${PY_VER} and NumPy from \$PREFIX, protoc from \$BUILD_PREFIX"
else
  python_include=$("${PYTHON}" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  python_library=$("${PYTHON}" -c 'import os, sysconfig as s;
print(os.path.join(s.get_config_var("LIBDIR"), s.get_config_var("LDLIBRARY")))')
  python_version=$("${PYTHON}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
fi

cmake_args=(
  -G Ninja
  -DCMAKE_BUILD_TYPE=Release
  -DCMAKE_INSTALL_PREFIX="${PREFIX}"
  -DCMAKE_INSTALL_LIBDIR=lib        # not lib/<triplet>: conda and venvs use lib/
  -DBUILD_SHARED_LIBS=ON
  -DBUILD_docs=OFF
  -DCMAKE_POLICY_VERSION_MINIMUM=3.5  # CMake 4 refuses Caffe's 2.8.7 minimum; older CMake ignores this
  -DBLAS=Open                       # Caffe calls CBLAS only; which library is below
  -DUSE_OPENCV=ON
  -DUSE_LEVELDB=ON
  -DUSE_LMDB=ON
  -DUSE_HDF5=ON
  -DUSE_ONEDNN=ON                   # oneDNN's primitives for the CPU layers (overlay/)
  -DBUILD_python=ON
  -DBUILD_python_layer=ON
  -Dpython_version=3
  -DPYTHON_EXECUTABLE="${PYTHON}"
  -DPYTHON_INCLUDE_DIR="${python_include}"
  -DPYTHON_LIBRARY="${python_library}"
  -DBoost_PYTHON_VERSION="${python_version}"  # picks boost_python3XX among several
  -DPYTHON_INSTALL_DIR="${SP_DIR}"  # patch 0003: pycaffe into site-packages
  "${cross_args[@]}"
)

# --- BLAS: conda-forge packages link the switchable CBLAS interface
# (libcblas), whose implementation the user picks at install time; elsewhere
# OpenBLAS itself.
if [[ -e "${PREFIX}/lib/libcblas.so" ]]; then
  cmake_args+=(-DOpenBLAS_LIB="${PREFIX}/lib/libcblas.so" -DOpenBLAS_INCLUDE_DIR="${PREFIX}/include")
fi

# --- Flavour: CPU, or CUDA with cuDNN and NCCL. GPU architectures follow the
# CUDA version: native code for every generation it supports that conda-forge
# builds for (Blackwell's sm_100 and sm_120 included), and PTX for the newest,
# which later GPUs JIT-compile.
if [[ -z "${cuda_compiler_version:-}" || "${cuda_compiler_version}" == "None" ]]; then
  echo "build-caffe.sh: CPU flavour"
  cmake_args+=(-DCPU_ONLY=ON)
else
  case "${cuda_compiler_version}" in
    # CUDA 12 is the last to build for Maxwell to Volta (sm_50-72); Blackwell
    # (sm_100, sm_120) needs 12.8 or newer.
    12.[89]) default_arch_bin="50 60 70 75 80 86 89 90 100 120" default_arch_ptx="120" ;;
    12.*) default_arch_bin="50 60 70 75 80 86 89 90" default_arch_ptx="90" ;;
    13.*) default_arch_bin="75 80 86 89 90 100 120" default_arch_ptx="120" ;;
    *) echo "build-caffe.sh: no GPU architecture list for CUDA ${cuda_compiler_version}" >&2; exit 1 ;;
  esac
  arch_bin="${CAFFE_CUDA_ARCH_BIN-${default_arch_bin}}"
  arch_ptx="${CAFFE_CUDA_ARCH_PTX-${default_arch_ptx}}"
  echo "build-caffe.sh: CUDA ${cuda_compiler_version} flavour, sm ${arch_bin}, PTX ${arch_ptx:-none}"
  # Native builds name one toolkit root (CUDA_HOME) holding NCCL too;
  # conda-forge's layout has nvcc in the build prefix, CUDA's headers and
  # libraries under targets/ of the host prefix, NCCL in the host prefix. Its
  # activation sets no CUDA_HOME, and without a root FindCUDA quietly gives a
  # CPU-only build.
  if [[ -n "${CUDA_HOME:-}" ]]; then
    cuda_root="${CUDA_HOME}" nvcc="${CUDA_HOME}/bin/nvcc" nccl_root="${CUDA_HOME}"
  else
    cuda_target=x86_64-linux
    [[ "${target_platform:-}" != linux-aarch64 ]] || cuda_target=sbsa-linux
    cuda_root="${PREFIX}/targets/${cuda_target}" nvcc="${BUILD_PREFIX}/bin/nvcc" nccl_root="${PREFIX}"
  fi
  cmake_args+=(
    -DCPU_ONLY=OFF
    -DUSE_CUDNN=ON
    -DUSE_NCCL=ON                   # caffe train -gpu 0,1 and pycaffe's NCCL (train.py)
    -DNCCL_INCLUDE_DIR="${nccl_root}/include"
    -DNCCL_LIBRARIES="${nccl_root}/lib/libnccl.so"
    -DCUDA_ARCH_NAME=Manual         # the "Auto" default probes a GPU at build time
    -DCUDA_ARCH_BIN="${arch_bin}"
    -DCUDA_ARCH_PTX="${arch_ptx}"
    -DCUDA_TOOLKIT_ROOT_DIR="${cuda_root}"
    -DCUDA_NVCC_EXECUTABLE="${nvcc}"
  )
fi

# --- Configure, build, install. CMAKE_ARGS (conda-build's toolchain settings,
# or ci/build's ccache launcher) come last so they can override the defaults.
# shellcheck disable=SC2086  # CMAKE_ARGS is a word list by convention
cmake -S "${SRC_DIR}" -B "${build_dir}" "${cmake_args[@]}" ${CMAKE_ARGS:-}
cmake --build "${build_dir}" --parallel "${CPU_COUNT:-2}"
cmake --install "${build_dir}"

# --- The GPU code the library carries, for users and for the test that
# reads libcaffe's fatbinaries back (tests/test_caffe_build.py).
if [[ -n "${arch_bin:-}" ]]; then
  { for arch in ${arch_bin}; do echo "sm_${arch}"; done
    for arch in ${arch_ptx}; do echo "compute_${arch}"; done
  } > "${PREFIX}/share/caffe/cuda-architectures.txt"
fi

# --- The example scripts as commands, as conda-forge's caffe 1.0 shipped
# them (classify, detect, draw_net), run by the env's own Python (the
# target's: in a cross build $PYTHON is the build machine's)...
for tool in classify detect draw_net; do
  { echo "#!${PREFIX}/bin/python"; tail -n +2 "${PREFIX}/share/caffe/python/${tool}.py"; } > "${PREFIX}/bin/${tool}"
  chmod 755 "${PREFIX}/bin/${tool}"
done
# ...and upstream's multi-process launcher (python/train.py), the way to train
# nets with Python layers on several GPUs (the caffe tool refuses them).
{ echo "#!${PREFIX}/bin/python"; tail -n +2 "${PREFIX}/share/caffe/python/train.py"; } > "${PREFIX}/bin/caffe-train"
chmod 755 "${PREFIX}/bin/caffe-train"
