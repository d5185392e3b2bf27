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
