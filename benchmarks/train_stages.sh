#!/usr/bin/env bash
# The train stages of the full recipes (params.yaml as it is: what `make run` trains),
# whole, one model after another, in a scratch folder: the data stages first (not timed),
# then each model's `python -m mnist_mlops.training.train`, its wall and CPU seconds and its
# device and cross-validated accuracy lines. The code is that of the checkout whose venv
# comes first on PATH; params.yaml and data/ are the current folder's.
#
#   MNIST_MIRROR=... bash benchmarks/train_stages.sh MODEL...
#   make against REF=4f170b9 LOOP='cmd:bash "$AGAINST_WORK/benchmarks/train_stages.sh" mlp_512x2'
#     (this script on both sides: each side's code and params)
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ -n "${MNIST_MIRROR:-}" ] || { echo "train_stages.sh: set MNIST_MIRROR to a folder holding the MNIST files" >&2; exit 2; }
scratch=$(mktemp -d "${TMPDIR:-/tmp}/train-stages.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
cp params.yaml "$scratch"/ && cp -r data "$scratch"/
cd "$scratch"
for stage in download parse preprocess; do
  python -m "mnist_mlops.data.$stage" >"$stage.log" 2>&1 \
    || { echo "train_stages.sh: the $stage stage failed:" >&2; tail -5 "$stage.log" >&2; exit 1; }
done
for model in "$@"; do
  TIMEFORMAT="$model: %R s wall, %U s user, %S s system"
  { time python -m mnist_mlops.training.train "$model" >"$model.log" 2>&1; } 2>"$model.time" \
    || { echo "train_stages.sh: train@$model failed:" >&2; tail -5 "$model.log" >&2; exit 1; }
  grep -E " trains on | CV val accuracy " "$model.log" | cut -c1-200
  cat "$model.time"
done
