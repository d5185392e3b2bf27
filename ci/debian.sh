# Debian: the build's packages, apt, and the sid chroot.
# Source it from ci/lib.sh; it runs nothing by itself.
# shellcheck shell=bash disable=SC2034,SC2154  # variables shared with ci/lib.sh

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
# oneDNN: Debian 12's libdnnl-dev is 2.6 (an older API), so the native build
# takes oneDNN 3.2 from PyPI (ci/onednn.txt); sid has oneDNN 3.
if [[ "${CAFFE_DISTRO:-}" == sid ]]; then
  apt_build_deps+=(libdnnl-dev)
else
  apt_build_deps+=(libboost-system-dev)
fi

# From Debian experimental when building in the sid chroot (ci/build --distro
# sid): the newest protobuf, glog and OpenCV, as conda-forge's next pins. Their
# libraries were built against sid's abseil and gflags, not experimental's
# newer ones (whose headers give undefined absl::...::int128 symbols and a
# second gflags), so those two stay at sid's versions.
apt_experimental_deps=(libprotobuf-dev protobuf-compiler libgoogle-glog-dev libopencv-dev
                       libabsl-dev/sid libgflags-dev/sid)

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

# The sid chroot (ci/build --distro sid), with experimental enabled.
sid_root="${repo_root}/build/sid-root"

# A Debian chroot of a suite at a folder, from the mirror apt uses, with the
# repository bind-mounted at its own path; made once, reused after. Its apt
# sources: the suite, then the extra suites given ("experimental").
ensure_chroot() {
  local root=$1 suite=$2 extra
  shift 2
  local mirror
  mirror=$(apt_mirror)
  [[ -n "${mirror}" ]] || die "cannot read a Debian mirror from apt's sources"
  if [[ ! -x "${root}/usr/bin/apt-get" ]]; then
    apt_install debootstrap
    echo "    debootstrap ${suite} from ${mirror}"
    debootstrap --variant=minbase "${suite}" "${root}" "${mirror}" >/dev/null
  fi
  { printf 'deb %s %s main\n' "${mirror}" "${suite}"
    for extra in "$@"; do printf 'deb %s %s main\n' "${mirror}" "${extra}"; done
  } > "${root}/etc/apt/sources.list"
  # A mirror frozen at a date serves sid's Release file past its Valid-Until.
  echo 'Acquire::Check-Valid-Until "false";' > "${root}/etc/apt/apt.conf.d/99caffe-pylayer"
  mkdir -p "${root}${repo_root}"
  mountpoint -q "${root}/proc" || mount -t proc proc "${root}/proc"
  mountpoint -q "${root}${repo_root}" || mount --bind "${repo_root}" "${root}${repo_root}"
  # This machine's compiler cache, so that a new clone's chroot builds hit it too.
  mkdir -p "${HOME}/.cache/ccache" "${root}/root/.cache/ccache"
  mountpoint -q "${root}/root/.cache/ccache" || mount --bind "${HOME}/.cache/ccache" "${root}/root/.cache/ccache"
  cp /etc/resolv.conf "${root}/etc/resolv.conf" 2>/dev/null || true
  # Certificate authorities this machine trusts locally (a proxy's, say)
  # must be trusted inside the chroot too, for pip.
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    mkdir -p "${root}/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "${root}/usr/local/share/ca-certificates/"
    chroot "${root}" update-ca-certificates >/dev/null 2>&1 || true
  fi
}

# Run one of ci/'s scripts inside a chroot that ensure_chroot made, with its
# own build root (build/NAME), from the repository root (the inner bash
# expands the quoted $0, $1, $@). Extra variables for the script come as
# NAME=VALUE words before the script's name.
# shellcheck disable=SC2016
run_in_chroot() {
  local root=$1 name=$2
  shift 2
  local vars=()
  while [[ "${1:-}" == *=* ]]; do vars+=("$1"); shift; done
  local status=0
  chroot "${root}" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CAFFE_BUILD_ROOT="${repo_root}/build/${name}" \
    CAFFE_PYLAYER_CACHE="${repo_root}/build/${name}/cache" \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt "${vars[@]}" \
    bash -c 'cd "$0" && exec "ci/$1" "${@:2}"' "${repo_root}" "$@" || status=$?
  # Unmount again, so that removing build/ can never reach the repository
  # through the chroot's bind mount.
  umount "${root}${repo_root}" "${root}/root/.cache/ccache" "${root}/proc/sys/fs/binfmt_misc" \
    "${root}/proc" 2>/dev/null || true
  return "${status}"
}

# --distro sid or --arch aarch64, given outside the chroot: run this ci/
# script inside its chroot instead.
run_in_distro_if_asked() {
  local distro=$1 arch=$2 script=$3
  shift 3
  [[ -z "${CAFFE_DISTRO:-}" ]] || return 0
  if [[ -n "${arch}" ]]; then
    step "into the Debian ${cross_suite} chroot for ${arch} (${cross_root#"${repo_root}/"}; builds under build/${arch})"
    ensure_chroot "${cross_root}" "${cross_suite}"
    run_in_chroot "${cross_root}" "${arch}" CAFFE_DISTRO="${cross_suite}" CAFFE_ARCH="${arch}" "${script}" "$@"
    exit
  fi
  [[ -n "${distro}" ]] || return 0
  [[ "${distro}" == sid ]] || die "unknown distro ${distro}: only sid is supported"
  step "into the Debian sid chroot (build/sid-root; builds under build/sid)"
  ensure_chroot "${sid_root}" sid experimental
  run_in_chroot "${sid_root}" sid CAFFE_DISTRO=sid "${script}" "$@"
  exit
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
