# The recipe's source: read it, download and verify the tarball, unpack, patch.
# Source it from ci/lib.sh; it runs nothing by itself.
# shellcheck shell=bash disable=SC2034,SC2154  # variables shared with ci/lib.sh

# Read the recipe's source section (URLs, sha256, patches) for the native build.
recipe_source() {
  "${tools_env}/bin/python" "${repo_root}/ci/recipe.py" source
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
  local file="${urls[0]##*/}" mirror
  mirror=$(apt_mirror)
  [[ -z "${mirror}" ]] || urls=("${mirror}/pool/main/c/caffe/${file}" "${urls[@]}")
  fetch_verified "${file}" "${sha256}" "${urls[@]}"
}

# A file into the cache from the first of the URLs that serves it (unless it
# is there already), checked against its sha256. Prints its path.
fetch_verified() {
  local file=$1 sha256=$2 url
  shift 2
  local path="${cache_dir}/${file}"
  mkdir -p "${cache_dir}"
  if [[ ! -f "${path}" ]]; then
    for url in "$@"; do
      echo "    downloading ${url}" >&2
      if curl -fsSL --retry 2 -o "${path}.part" "${url}"; then
        mv "${path}.part" "${path}"
        break
      fi
      echo "    failed: ${url}" >&2
    done
    [[ -f "${path}" ]] || die "could not download ${file} from any of $# URLs"
  fi
  verify_sha256 "${path}" "${sha256}"
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

# Copy the C++ files the project adds to Caffe (overlay/, laid out as Caffe's
# tree) into the source tree, as conda-build does with the recipe's overlay
# source. Modification times are kept, so ninja recompiles only what changed;
# files an earlier overlay added and this one no longer has are removed.
overlay_source() {
  local dir=$1 listed="$1/.caffe-pylayer-overlay" file
  if [[ -f "${listed}" ]]; then
    while read -r file; do
      [[ -f "${repo_root}/overlay/${file}" ]] || rm -f "${dir}/${file}"
    done < "${listed}"
  fi
  (cd "${repo_root}/overlay" && find . -type f -printf '%P\n' | sort) > "${listed}"
  cp -a "${repo_root}/overlay/." "${dir}/"
  echo "    overlay/: $(wc -l < "${listed}") files copied over the tree"
}
