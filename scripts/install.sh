#!/usr/bin/env bash
# Install alive into ./.venv (or $ALIVE_VENV). Usage: bash scripts/install.sh [--test]
#   --test   also install the test extras (pytest, hypothesis)
# torch is installed first and pinned, so that pip does not pull a multi-GB CUDA build on a machine
# without a GPU. Where no local CPU wheel is on offer, set ALIVE_TORCH_INDEX to a CPU wheel index.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
VENV=${ALIVE_VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=""
[ "${1:-}" = "--test" ] && EXTRAS="[test]"

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "GPU found: installing torch $TORCH_VERSION (CUDA build)"
    "${PIP[@]}" install -q "torch==$TORCH_VERSION"
  else
    echo "no GPU found: installing torch $TORCH_VERSION (CPU build)"
    "${PIP[@]}" install -q "torch==$TORCH_VERSION" ${ALIVE_TORCH_INDEX:+--index-url "$ALIVE_TORCH_INDEX"}
  fi
fi

# opencv-python-headless and opencv-contrib-python-headless write the same cv2/ folder: an older venv
# with the plain build must lose it before the contrib build (which alive needs) goes in
if "${PIP[@]}" show -q opencv-python-headless >/dev/null 2>&1; then
  "${PIP[@]}" uninstall -q -y opencv-python-headless
fi

echo "installing alive$EXTRAS"
"${PIP[@]}" install -q -e ".$EXTRAS"
"$VENV/bin/python" -c "import pipeline, moderation, torch; print('alive', pipeline.__version__, '| torch', torch.__version__)"
