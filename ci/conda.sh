# conda: the tools, the stand-in channel, the offline client.
# Source it from ci/lib.sh; it runs nothing by itself.
# shellcheck shell=bash disable=SC2034,SC2154  # variables shared with ci/lib.sh

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
# one flavour: build/conda (CPU) or build/conda-cuda130. Sets conda_dir, conda_env.
select_conda_dir() {
  local cuda_version=$1
  conda_dir="${build_root}/conda"
  if [[ "${cuda_version}" != None ]]; then
    conda_dir="${build_root}/conda-cuda${cuda_version//./}"
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
