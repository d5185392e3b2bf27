#!/usr/bin/env bash
# Install the caffe-pylayer package (pylayers/) into $PREFIX's site-packages.
# conda-build runs it for the caffe-pylayer output; ci/build runs it natively.
set -euo pipefail

# --no-deps: numpy and caffe come from the recipe's run requirements (or the
# venv), never from PyPI. --no-build-isolation: build offline with the env's
# own setuptools.
"${PYTHON}" -m pip install --no-deps --no-build-isolation --no-index \
  --disable-pip-version-check -q "${SRC_DIR}/pylayers"
