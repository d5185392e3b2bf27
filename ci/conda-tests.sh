# The checks of ci/test --conda. Source it after ci/lib.sh; it runs nothing by itself.
# shellcheck shell=bash disable=SC2154  # the variables come from ci/lib.sh

# Every variant (CPU, CUDA 12.9, CUDA 13.0 x every Python of the pinning and
# its migrations) rendered by conda-build from recipe/, under several hash
# seeds; then the exported recipe, one Python x CUDA request at a time, as
# ci/conda-build narrows the pinning for it.
check_rendered_variants() {
  step "conda-build renders every variant with conda-forge's pinning (3 hash seeds), then each request"
  [[ -n "${CONDA_FORGE_PINNING:-}" ]] || die "CONDA_FORGE_PINNING is not set (see ci/conda-build --help)"
  echo "    recipe"
  "${conda_python}" "${repo_root}/ci/conda_pinning.py" check "${CONDA_FORGE_PINNING}" "${repo_root}/recipe" \
    --seeds 0 1 2 --work "${conda_dir}" 2> >(grep -v '^WARNING: Setting build' >&2) \
    || die "conda-build's rendering of recipe/ failed (above)"
  # linux-aarch64, which conda-forge cross-compiles on linux-64: one seed (the
  # seeds above test conda-build's merging, which is the same for both).
  echo "    recipe for linux-aarch64"
  "${conda_python}" "${repo_root}/ci/conda_pinning.py" check "${CONDA_FORGE_PINNING}" "${repo_root}/recipe" \
    --subdir linux-aarch64 --seeds 0 --work "${conda_dir}" 2> >(grep -v '^WARNING: Setting build' >&2) \
    || die "conda-build's rendering of recipe/ for linux-aarch64 failed (above)"
  echo "    ${conda_dir#"${repo_root}/"}/recipe, one request at a time (ci/conda-build --python V --cuda V)"
  "${conda_python}" "${repo_root}/ci/conda_pinning.py" requests "${CONDA_FORGE_PINNING}" \
    "${conda_dir}/recipe" --work "${conda_dir}" 2> >(grep -v '^WARNING: Setting build' >&2) \
    || die "a request does not render exactly its one caffe (above)"
}

# conda-forge's own linter (CONDA_SMITHY_LINT) on the exported recipe, the
# folder a pull request to conda-forge would hold (recipe/ itself sits beside
# this repository's own workflows, which a feedstock may not have). The one
# lint allowed: no recipe-maintainers yet, as none is invented.
check_conda_forge_lint() {
  step "conda-forge's linter on the exported recipe (${CONDA_SMITHY_LINT:-unset})"
  [[ -n "${CONDA_SMITHY_LINT:-}" ]] || die "CONDA_SMITHY_LINT is not set (see ci/test --help)"
  local report="${build_root}/logs/conda-forge-lint.log" status=0 findings
  # Under a name other than "recipe", which the linter would take for a feedstock's.
  rm -rf "${conda_dir}/lint"
  mkdir -p "${conda_dir}/lint"
  cp -r "${conda_dir}/recipe" "${conda_dir}/lint/caffe"
  CONDA_SMITHY_VENV="${build_root}/conda-smithy" "${CONDA_SMITHY_LINT}" "${conda_dir}/lint/caffe" \
    > "${report}" 2>&1 || status=$?
  (( status <= 1 )) || { tail -n 20 "${report}"; die "the linter did not run (exit ${status})"; }
  # The " * " items under "Lints (N):" and "Hints (N):".
  findings=$(awk '/^(Lints|Hints) \(/ {on=1; next} /^[A-Z]/ {on=0} on && /^ \* /' "${report}" \
    | grep -v 'could do with some maintainers listed' || true)
  [[ -z "${findings}" ]] || { echo "${findings}"; die "conda-forge's linter: lints or hints above (log: ${report#"${repo_root}/"})"; }
  echo "    $(grep -E '^(Lints|Hints) \(' "${report}" | tr -d ':' | paste -sd' '): only the recipe-maintainers placeholder"
}

# conda-smithy's rerendering of a feedstock made of the exported recipe and
# conda-forge.yml (ci/rerender.py), with the linter's conda-smithy: the jobs
# it writes for linux-aarch64 must cross-compile on linux-64 and keep the tests.
check_conda_forge_rerender() {
  step "conda-smithy rerenders the feedstock (conda-forge.yml + the exported recipe)"
  local feedstock="${conda_dir}/feedstock"
  rm -rf "${feedstock}"
  mkdir -p "${feedstock}"
  cp -r "${conda_dir}/recipe" "${feedstock}/recipe"
  cp "${repo_root}/conda-forge.yml" "${feedstock}/"
  # conda-smithy reads the feedstock as a git repository.
  git -C "${feedstock}" init -q
  git -C "${feedstock}" add -A
  git -C "${feedstock}" -c user.name=ci -c user.email=ci@localhost commit -qm recipe
  "${build_root}/conda-smithy/bin/python" "${repo_root}/ci/rerender.py" "${feedstock}" "${CONDA_FORGE_PINNING}" \
    > "${build_root}/logs/conda-smithy-rerender.log" 2>&1 \
    || { tail -n 20 "${build_root}/logs/conda-smithy-rerender.log"
         die "conda-smithy's rerendering failed (log: build/logs/conda-smithy-rerender.log)"; }
  tail -n 1 "${build_root}/logs/conda-smithy-rerender.log"
}

# What the .conda files hold: files, licenses, run dependencies against NEEDED.
check_built_packages() {
  step "the built packages: files, licenses, dependencies against linked libraries"
  "${conda_python}" "${repo_root}/ci/check_packages.py" "${conda_dir}/packages" \
    "${conda_dir}/standins" --croot "${conda_dir}/croot" || die "the built packages are wrong (above)"
}

# The install checks of tests/ (test_caffe_build.py: the flavour, the layer
# registry, the caffe tool and its errors) in the env conda made, from a folder
# outside the repository, with no PYTHONPATH: only what conda installed can be
# imported. The whole of tests/ ran in conda-build's test env of the same
# packages (the recipe's test section), so it does not run twice.
run_tests_in_conda_env() {
  step "install checks (tests/test_caffe_build.py) in ${conda_env#"${repo_root}/"}, run from outside the repository"
  local outside
  outside=$(mktemp -d)
  cp -r "${repo_root}/tests" "${outside}/tests"
  (cd "${outside}" && env -u PYTHONPATH CAFFE_EXPECT_CUDA="${cuda_version}" \
    "${conda_env}/bin/python" -m pytest -p no:cacheprovider -q -rs tests/test_caffe_build.py) \
    || { rm -rf "${outside}"; die "install checks failed in ${conda_env#"${repo_root}/"}"; }
  rm -rf "${outside}"
}

# A CPU caffe constrains caffe-gpu away, a CUDA caffe caffe-cpu: offer the
# solver the other selector with no dependencies at all (a probe package), so
# only that constraint can refuse it.
check_other_selector_refused() {
  local selector=caffe-gpu
  [[ "${cuda_version}" == None ]] || selector=caffe-cpu
  step "the solver refuses ${selector} in the env of this caffe"
  local probe="${conda_dir}/probe-channel" version
  version=$("${conda_env}/bin/python" -c 'import json, glob
print(json.load(open(glob.glob("'"${conda_env}"'/conda-meta/caffe-1*.json")[0]))["version"])')
  rm -rf "${probe}"
  "${conda_python}" - "${repo_root}/ci" "${probe}" "${version}" "${selector}" <<'PY' \
    || die "could not make the ${selector} probe package"
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import standin_channel as s
s.write_package(s.Package(sys.argv[4], sys.argv[3], "a probe: a selector with no dependencies",
                          build="probe_0"), Path(sys.argv[2]))
PY
  "${conda_python}" -m conda_index "${probe}" >/dev/null 2>&1 || die "could not index ${probe}"
  local log="${build_root}/logs/conda-${selector}-refused.log"
  if conda_offline install --dry-run -y -p "${conda_env}" -c "file://${probe}" \
      "${selector}=${version}" > "${log}" 2>&1; then
    die "conda would install ${selector} beside this caffe (log: ${log#"${repo_root}/"})"
  fi
  grep -q "${selector} <0a0" "${log}" \
    || die "conda refused ${selector}, but not for caffe's constraint (log: ${log#"${repo_root}/"})"
  echo "    refused, by caffe's run_constrained: $(grep -m1 "${selector} <0a0" "${log}" | sed 's/^[^a-z]*//')"
}

# The CPU run also renders every variant (CUDA ones included); a CUDA run
# checks what it built.
run_conda_tests() {
  cuda_version=$1
  local tests_started build=(--conda)
  tests_started=$(date +%s)
  [[ "${cuda_version}" == None ]] || build+=(--cuda "${cuda_version}")
  select_conda_dir "${cuda_version}"
  ensure_conda_tools
  if ! "${conda_env}/bin/python" -c 'import caffe, caffe_pylayer' 2>/dev/null; then
    step "no usable ${conda_env#"${repo_root}/"}: running ci/build ${build[*]}"
    "${repo_root}/ci/build" "${build[@]}"
  fi
  if [[ "${cuda_version}" == None ]]; then
    check_rendered_variants
    check_conda_forge_lint
    check_conda_forge_rerender
  fi
  check_built_packages
  run_tests_in_conda_env
  check_other_selector_refused
  step_finish
  echo "all conda tests passed in $(( $(date +%s) - tests_started ))s"
}
