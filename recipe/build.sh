#!/usr/bin/env bash
# Build and install Caffe with the Python layer into $PREFIX.
#
# Written against conda-build's variables, so conda-build runs it as is; ci/build
# exports the same variables to run it natively (a venv plays $PREFIX):
#   PREFIX SRC_DIR PYTHON SP_DIR CPU_COUNT CMAKE_ARGS   (always)
#   cuda_compiler_version   "None" or unset: CPU flavour; "12.9", "13.0": CUDA flavour
#   CAFFE_CUDA_ARCH_BIN     CUDA architectures, space-separated ("75 80 86 89 90")
#   CAFFE_CUDA_ARCH_PTX     architecture to also embed as PTX, for newer GPUs
#   CUDA_HOME               CUDA toolkit root when it is not in $PREFIX (native build)
set -euo pipefail

build_dir="${SRC_DIR}/build"

# --- Python: Caffe's FindPythonLibs-era CMake must be told which interpreter,
# headers and libpython to use, or it picks the system's.
python_include=$("${PYTHON}" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
python_library=$("${PYTHON}" -c 'import os, sysconfig as s;
print(os.path.join(s.get_config_var("LIBDIR"), s.get_config_var("LDLIBRARY")))')
python_version=$("${PYTHON}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

cmake_args=(
  -G Ninja
  -DCMAKE_BUILD_TYPE=Release
  -DCMAKE_INSTALL_PREFIX="${PREFIX}"
  -DCMAKE_INSTALL_LIBDIR=lib        # not lib/<triplet>: conda and venvs use lib/
  -DBUILD_SHARED_LIBS=ON
  -DBUILD_docs=OFF
  -DCMAKE_POLICY_VERSION_MINIMUM=3.5  # CMake 4 refuses Caffe's 2.8.7 minimum; older CMake ignores this
  -DBLAS=Open                       # OpenBLAS; conda-forge's libblas can switch it
  -DUSE_OPENCV=ON
  -DUSE_LEVELDB=ON
  -DUSE_LMDB=ON
  -DUSE_HDF5=ON
  -DBUILD_python=ON
  -DBUILD_python_layer=ON
  -Dpython_version=3
  -DPYTHON_EXECUTABLE="${PYTHON}"
  -DPYTHON_INCLUDE_DIR="${python_include}"
  -DPYTHON_LIBRARY="${python_library}"
  -DBoost_PYTHON_VERSION="${python_version}"  # picks boost_python3XX among several
  -DPYTHON_INSTALL_DIR="${SP_DIR}"  # patch 0003: pycaffe into site-packages
)

# --- Flavour: CPU, or CUDA with cuDNN for the architectures asked for.
if [[ -z "${cuda_compiler_version:-}" || "${cuda_compiler_version}" == "None" ]]; then
  echo "build.sh: CPU flavour"
  cmake_args+=(-DCPU_ONLY=ON)
else
  echo "build.sh: CUDA ${cuda_compiler_version} flavour, sm ${CAFFE_CUDA_ARCH_BIN:?}," \
       "PTX ${CAFFE_CUDA_ARCH_PTX:-none}"
  cmake_args+=(
    -DCPU_ONLY=OFF
    -DUSE_CUDNN=ON
    -DCUDA_ARCH_NAME=Manual         # the "Auto" default probes a GPU at build time
    -DCUDA_ARCH_BIN="${CAFFE_CUDA_ARCH_BIN}"
    -DCUDA_ARCH_PTX="${CAFFE_CUDA_ARCH_PTX:-}"
  )
  if [[ -n "${CUDA_HOME:-}" ]]; then
    cmake_args+=(-DCUDA_TOOLKIT_ROOT_DIR="${CUDA_HOME}")
  fi
fi

# --- Configure, build, install. CMAKE_ARGS (conda-build's toolchain settings,
# or ci/build's ccache launcher) come last so they can override the defaults.
# shellcheck disable=SC2086  # CMAKE_ARGS is a word list by convention
cmake -S "${SRC_DIR}" -B "${build_dir}" "${cmake_args[@]}" ${CMAKE_ARGS:-}
cmake --build "${build_dir}" --parallel "${CPU_COUNT:-2}"
cmake --install "${build_dir}"
