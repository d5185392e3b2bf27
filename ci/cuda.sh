# The CUDA toolkit of the native CUDA build, made from NVIDIA's wheels alone
# (ci/cuda-<version>.txt pins each one by version and sha256). Source it; it
# runs nothing by itself. Needs ci/lib.sh (die, make_venv).
# shellcheck shell=bash disable=SC2154  # repo_root comes from ci/lib.sh

cuda_versions=(13.0 12.9 12.4)   # the first is what --cuda alone builds

# CUDA versions whose compiler no wheel carries (NVIDIA's CUDA 12 compiler
# wheels hold ptxas, libnvvm and libdevice only): nvcc, cicc, cudafe++,
# fatbinary, nvlink and bin2c from Debian's nvidia-cuda-toolkit (non-free),
# pinned by its pool path and sha256, downloaded from apt's mirror, unpacked
# and never installed. Its programs need glibc 2.7 at most, so they run on
# Debian 12, which cannot install the package itself.
declare -A cuda_compiler_debs=(
  [12.4]="pool/non-free/n/nvidia-cuda-toolkit/nvidia-cuda-toolkit_12.4.131~12.4.1-2_amd64.deb cd5fe85aee38d108b315f408a688641478f2402622a10c677478eb7a6c4e5319"
)

# The wheels of one CUDA version into a venv, each checked against its hash.
install_cuda_wheels() {
  local version=$1 env=$2
  local requirements="${repo_root}/ci/cuda-${version}.txt"
  [[ -f "${requirements}" ]] || die "no CUDA ${version} wheel list (ci/cuda-${version}.txt); versions: ${cuda_versions[*]}"
  make_venv "${env}" --require-hashes --no-deps -r "${requirements}"
}

# One toolkit root for Caffe's FindCUDA-era CMake, laid out as NVIDIA's
# installer does: bin/ (a copy, so that nvcc.profile finds the rest beside
# it), nvvm/, include/ and lib/ merged from every nvidia/* wheel folder,
# targets/x86_64-linux pointing back at them, and the unversioned .so names
# the linker needs (the wheels ship only libcublas.so.13 and the like).
make_cuda_root() {
  local version=$1 site_packages=$2 root=$3
  local wheels=("${site_packages}"/nvidia/*/)
  rm -rf "${root}"
  mkdir -p "${root}/include" "${root}/lib" "${root}/targets/x86_64-linux"
  local wheel entry kind
  for wheel in "${wheels[@]}"; do
    [[ -x "${wheel}bin/nvcc" ]] && cp -a "${wheel}bin" "${root}/bin"
    [[ -x "${wheel}nvvm/bin/cicc" ]] && ln -s "${wheel}nvvm" "${root}/nvvm"
    for entry in "${wheel}"include/* "${wheel}"lib/*; do
      case "${entry##*/}" in __init__.py|__pycache__|'*') continue ;; esac
      kind=${entry%/*}
      kind=${kind##*/}   # include or lib
      [[ -e "${root}/${kind}/${entry##*/}" ]] || ln -s "${entry}" "${root}/${kind}/"
    done
  done
  ln -s lib "${root}/lib64"
  ln -s ../../include ../../lib "${root}/targets/x86_64-linux/"
  for entry in "${root}"/lib/lib*.so.*; do
    [[ -e "${entry%%.so.*}.so" ]] || ln -s "${entry##*/}" "${entry%%.so.*}.so"
  done
  [[ -z "${cuda_compiler_debs[${version}]:-}" ]] || add_deb_compiler "${version}" "${site_packages}" "${root}"
  check_cuda_root "${version}" "${root}"
}

# The compiler of a version in cuda_compiler_debs, into a root that has the
# wheels' headers and libraries: the .deb's programs beside the wheel's ptxas,
# libnvvm and libdevice, and an nvcc.profile for this root (Debian's own
# names /usr paths).
add_deb_compiler() {
  local version=$1 site_packages=$2 root=$3 pool_path sha256 mirror deb
  read -r pool_path sha256 <<< "${cuda_compiler_debs[${version}]}"
  mirror=$(apt_mirror)
  [[ -n "${mirror}" ]] || die "cannot read a Debian mirror from apt's sources, for ${pool_path##*/}"
  deb=$(fetch_verified "${pool_path##*/}" "${sha256}" "${mirror}/${pool_path}")
  local unpacked="${root}.deb" nvcc_wheel="${site_packages}/nvidia/cuda_nvcc" tool part
  rm -rf "${unpacked}"
  dpkg-deb -x "${deb}" "${unpacked}"
  local programs="${unpacked}/usr/lib/nvidia-cuda-toolkit/bin"
  mkdir -p "${root}/bin" "${root}/nvvm/bin"
  cp "${programs}/nvcc" "${root}/bin/"   # /usr/bin/nvcc is Debian's wrapper script
  for tool in cudafe++ fatbinary nvlink bin2c; do
    cp "${unpacked}/usr/bin/${tool}" "${root}/bin/"
  done
  cp "${programs}/cicc" "${root}/nvvm/bin/"
  rm -rf "${unpacked}"
  ln -s "${nvcc_wheel}/bin/ptxas" "${root}/bin/ptxas"
  for part in lib64 libdevice include; do
    ln -s "${nvcc_wheel}/nvvm/${part}" "${root}/nvvm/${part}"
  done
  # As NVIDIA's installer writes it: everything relative to bin/.
  cat > "${root}/bin/nvcc.profile" <<'PROFILE'
TOP              = $(_HERE_)/..
NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice
LD_LIBRARY_PATH += $(TOP)/lib:
PATH            += $(TOP)/nvvm/bin:$(_HERE_):
INCLUDES        +=  "-I$(TOP)/$(_TARGET_DIR_)/include" $(_SPACE_)
LIBRARIES        =+ $(_SPACE_) "-L$(TOP)/$(_TARGET_DIR_)/lib$(_TARGET_SIZE_)/stubs" "-L$(TOP)/$(_TARGET_DIR_)/lib$(_TARGET_SIZE_)"
CUDAFE_FLAGS    +=
PTXAS_FLAGS     +=
PROFILE
}

# Everything the build uses must be in the root before compiling starts.
check_cuda_root() {
  local version=$1 root=$2 missing=() path
  for path in bin/nvcc bin/fatbinary bin/nvlink bin/ptxas nvvm/bin/cicc nvvm/libdevice/libdevice.10.bc \
              include/cuda_runtime.h include/cublas_v2.h \
              include/curand.h include/cudnn.h include/nccl.h \
              lib/libcudart.so lib/libcublas.so lib/libcurand.so lib/libcudnn.so lib/libnccl.so; do
    [[ -e "${root}/${path}" ]] || missing+=("${path}")
  done
  if [[ ! -e "${root}/bin/nvcc" ]]; then
    die "no nvcc in the CUDA ${version} wheels (ci/cuda-${version}.txt): their compiler wheel" \
        "has no nvcc driver, so CUDA ${version} cannot be built from wheels alone (missing: ${missing[*]})"
  fi
  (( ${#missing[@]} == 0 )) || die "the CUDA ${version} wheels (ci/cuda-${version}.txt) lack ${missing[*]}"
  local version_found
  version_found=$("${root}/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
  [[ "${version_found}" == "${version}" ]] || die "nvcc in ${root} is CUDA ${version_found:-?}, not ${version}"
}

# nvcc refuses host compilers newer than it knows (crt/host_config.h): find
# out now, with nvcc's own message, rather than at the first .cu file.
check_host_compiler() {
  local root=$1 cxx=${2:-c++} probe
  probe=$(mktemp -d)
  echo '__global__ void probe() {}' > "${probe}/probe.cu"
  if ! "${root}/bin/nvcc" -ccbin "${cxx}" -c "${probe}/probe.cu" -o "${probe}/probe.o" \
       > "${probe}/log" 2>&1; then
    cat "${probe}/log" >&2
    rm -rf "${probe}"
    die "nvcc $("${root}/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p') rejects the host compiler $("${cxx}" --version | head -n 1)"
  fi
  rm -rf "${probe}"
}
