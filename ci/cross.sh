# The aarch64 cross build (ci/build --arch aarch64) and the emulation its
# tests run under. Source it from ci/lib.sh; it runs nothing by itself.
# shellcheck shell=bash disable=SC2034,SC2154  # variables shared with ci/lib.sh
#
# It builds in a Debian trixie chroot (oneDNN 3 for arm64 is in trixie and
# later; bookworm's is the 2.6 API) with Debian's cross compilers and the arm64
# libraries installed beside the chroot's own (multiarch), so no sysroot is
# assembled by hand. The package env is a venv of trixie's arm64 CPython with
# aarch64 wheels from PyPI; the kernel runs its programs through qemu-user
# (binfmt_misc), so the build can ask that Python for its headers and NumPy's,
# and the tests' subprocesses (the caffe tool, python -c) start as they would
# on an arm64 machine.

cross_suite=trixie
cross_arch=aarch64
cross_root="${repo_root}/build/aarch64-root"
cross_debian_arch=arm64
cross_toolchain="${repo_root}/ci/aarch64-toolchain.cmake"
cross_wheel_platform=manylinux_2_28_aarch64

# The emulated CPUs the tests run on: a Neoverse V1 (SVE, as Graviton 3; oneDNN
# has SVE kernels of its own) and a Neoverse N1 (NEON only, as Graviton 2 and
# Ampere Altra). Every post-build test runs on the first; the CPU engine's on
# both. Not qemu's "max": NumPy's matmul gives wrong results there (its
# OpenBLAS kernel for that CPU model; the same wheel is right on V1 and N1).
cross_cpus=(neoverse-v1 neoverse-n1)
cross_engine_tests=(test_cpu_engine.py test_cpu_inference.py test_engine_differential.py)
# ci/test --arch aarch64 --quick: the post-build tests .ci/run has time for
# under emulation (about a third of the whole's time).
cross_quick_tests=(test_caffe_build.py "${cross_engine_tests[@]}" test_euclidean_loss.py
                   test_training.py test_errors.py)
# Caffe's C++ suite under emulation, in part: the engine's own tests (the
# code whose kernels differ by CPU) and the tests of the math, memory and net
# code every layer stands on (BLAS and im2col on arm64, SyncedMemory, Blob,
# Net, the fillers): 198 tests, 2 minutes under qemu. The per-layer gradient
# checks and the solvers' tests would take most of an hour there and test code
# that does not differ by architecture (tests/ trains nets through the solvers).
cross_cpp_tests='OneDNN*:*MathFunctions*:*Im2col*:*SyncedMemory*:*Blob*:*NetTest*:*Filler*-*GPU*'

# The build machine's side: compilers, tools, the emulator.
apt_cross_host_deps=(
  crossbuild-essential-arm64 cmake ninja-build ccache pkg-config patch curl ca-certificates
  protobuf-compiler python3 python3-venv qemu-user file graphviz binutils
)
# The target's libraries, as the native build's apt_build_deps (:arm64 added).
apt_cross_target_deps=(
  libboost-thread-dev libboost-filesystem-dev libboost-python-dev
  libprotobuf-dev libgoogle-glog-dev libgflags-dev
  libhdf5-dev libleveldb-dev liblmdb-dev libsnappy-dev libopenblas-dev libopencv-dev
  libdnnl-dev libpython3-dev
)

# The chroot's packages, arm64 ones included.
install_cross_deps() {
  dpkg --print-foreign-architectures | grep -qx "${cross_debian_arch}" \
    || dpkg --add-architecture "${cross_debian_arch}"
  apt_install "${apt_cross_host_deps[@]}" "${apt_cross_target_deps[@]/%/:${cross_debian_arch}}"
}

# The kernel's rule that runs aarch64 programs through qemu-aarch64 (F: the
# emulator is opened now, so the rule also works in other roots). Made when
# missing; it stays until the machine restarts, as Debian's qemu-user-binfmt
# package would leave it.
binfmt_dir=/proc/sys/fs/binfmt_misc
ensure_binfmt() {
  if [[ ! -e "${binfmt_dir}/register" ]]; then
    mount -t binfmt_misc binfmt_misc "${binfmt_dir}" \
      || die "cannot mount binfmt_misc at ${binfmt_dir}: running aarch64 programs needs it (and root)"
  fi
  [[ -e "${binfmt_dir}/qemu-aarch64" ]] && return
  command -v qemu-aarch64 >/dev/null || die "qemu-aarch64 is missing: install Debian's qemu-user"
  # ELF, 64-bit, little-endian, executable or shared object, machine 183 (AArch64).
  local magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
  local mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
  echo ":qemu-aarch64:M::${magic}:${mask}:$(command -v qemu-aarch64):F" > "${binfmt_dir}/register"
  echo "    binfmt_misc: aarch64 programs now run through $(command -v qemu-aarch64)"
}

# The package env for the target: a venv of trixie's arm64 CPython (its
# interpreter unpacked from Debian's .deb; its standard library is the
# multiarch one the arm64 libpython packages installed) holding aarch64 wheels
# of the native env's packages.
make_cross_env() {
  local dir=$1
  local py
  py=python$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  local site="${dir}/lib/${py}/site-packages"
  if [[ ! -x "${dir}/bin/${py}" ]]; then
    local unpacked
    unpacked=$(mktemp -d)
    (cd "${unpacked}" && apt-get download -qq "${py}-minimal:${cross_debian_arch}" 2>/dev/null \
      && dpkg-deb -x ./*.deb root) || die "cannot download ${py}-minimal:${cross_debian_arch}"
    mkdir -p "${dir}/bin" "${site}"
    cp "${unpacked}/root/usr/bin/${py}" "${dir}/bin/${py}"
    rm -rf "${unpacked}"
    ln -sf "${py}" "${dir}/bin/python3"
    ln -sf "${py}" "${dir}/bin/python"
    printf 'home = /usr/bin\ninclude-system-site-packages = false\nversion = %s\n' \
      "$(python3 -c 'import platform; print(platform.python_version())')" > "${dir}/pyvenv.cfg"
    # Where a conda prefix has the target's headers and libpython, so that
    # recipe/build-caffe.sh takes its cross-build path as under conda-build.
    mkdir -p "${dir}/include"
    ln -sfn "/usr/include/${py}" "${dir}/include/${py}"
    ln -sf "/usr/lib/${cross_arch}-linux-gnu/lib${py}.so" "${dir}/lib/lib${py}.so"
  fi
  # pip of the build machine's tools env installs the target's wheels; a stamp
  # of the request skips it when nothing changed.
  local request=("${pip_env_deps[@]}" pip "setuptools>=70.1")
  if [[ "$(cat "${dir}/.wheels" 2>/dev/null)" != "${request[*]}" ]]; then
    "${tools_env}/bin/python" -m pip install -q --disable-pip-version-check --upgrade \
      --target "${site}" --platform "${cross_wheel_platform}" --implementation cp \
      --python-version "${py#python}" --only-binary=:all: "${request[@]}"
    echo "${request[*]}" > "${dir}/.wheels"
  fi
  echo "    $("${dir}/bin/python" -c 'import numpy, platform, sys
print(platform.machine(), "Python", sys.version.split()[0], "NumPy", numpy.__version__)')"
}

# conda-build's variables for a cross build, as recipe/build-caffe.sh reads
# them: the build machine's tools (protoc) under BUILD_PREFIX, the target's
# Python version.
export_cross_build_vars() {
  export CONDA_BUILD_CROSS_COMPILATION=1 BUILD_PREFIX=/usr \
    build_platform=linux-64 target_platform="linux-${cross_arch}"
  PY_VER=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  export PY_VER
}
