#!/usr/bin/env bash
# Tutorial 001's ablation grid: the mlp_512x2 baseline and its 8 one-change variants, as DVC
# experiments in the queue (each runs in its own temporary workspace; yours is untouched),
# all logged to one MLflow store, then tabled with `mnist-mlops compare --model mlp_512x2`.
#
#   bash benchmarks/ablation.sh [extra -S overrides, e.g. -S train.max_epochs=2]
#   make ablation
set -euo pipefail
cd "$(dirname "$0")/.."
# Queued experiments run elsewhere: give them an absolute tracking URI.
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}"
extra=("$@")
m=models.mlp_512x2
queue() {
  local name=$1; shift
  dvc exp run --queue -f -n "$name" "${extra[@]}" "$@" evaluate@mlp_512x2
}
queue mlp-baseline
queue mlp-units-2048 -S "$m.hidden_units=[2048,2048]"
queue mlp-units-128  -S "$m.hidden_units=[128,128]"
queue mlp-no-dropout -S "$m.dropout=0.0"
queue mlp-linear     -S "$m.activation=linear"
queue mlp-no-scaling -S "$m.scaling=none"
queue mlp-sgd        -S "$m.optimizer=sgd" -S "$m.learning_rate=0.01"   # Keras SGD() default
queue mlp-batch-512  -S "$m.batch_size=512"
queue mlp-batch-32   -S "$m.batch_size=32"
dvc queue start -j 1
# (no `grep -q`: it would close the pipe early and, with pipefail, end the loop at once)
while dvc queue status | grep -E "Queued|Running" >/dev/null; do sleep 20; done
dvc queue status
dvc exp show --only-changed --md -A 2>/dev/null | head -40 || true
mnist-mlops compare --all --model mlp_512x2 --markdown reports/ablation.md
