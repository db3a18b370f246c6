#!/usr/bin/env bash
# One loop timed side by side: a reference commit against the working tree, on this
# machine, in this session, runs alternating (ref, work, work, ref, ...) so that a machine
# that speeds up or slows down over the session weighs on both alike.
#
#   bash benchmarks/against.sh REF LOOP [RUNS]        (make against REF=... LOOP=...)
#
# LOOP is one of
#   setup      `make setup` in a fresh clone, a new venv each time (pip's wheel cache as it is)
#   quick      `make quick` in a fresh clone (no dvc.lock, empty DVC cache, new MLflow store),
#              the side's venv linked in: a new user's first result after `make setup`
#   test       `make test` (what CI runs), in the side's own checkout
#   test-fast  `make test-fast`
#   run        `make run` in a fresh clone: the full recipes, hours on a CPU
#   cmd:TEXT   TEXT run by bash in the side's checkout with its venv first on PATH,
#              e.g. 'cmd:python benchmarks/bench_tracking.py'; $AGAINST_WORK is the
#              working tree, for a script the reference does not have:
#              'cmd:bash "$AGAINST_WORK/benchmarks/train_stages.sh" mlp_512x2'
#
# REF is checked out once as a git worktree under $AGAINST_HOME (default
# ~/.cache/mnist-mlops-against/<commit>) with its own venv from its own requirements.lock
# (its own `make setup`), and kept for the next call. The working tree is the other side,
# uncommitted changes included. Every run's output is kept in $AGAINST_HOME/logs; each
# figure line gives the wall time, the exit status, the test counts where pytest printed
# them, and the 1-minute load average before the run (2 cores busy with other work show
# here as a load near 2). Prints the median of each side and the ratio work / ref.
set -euo pipefail

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 2 ] || usage
ref_arg=$1 loop=$2 runs=${3:-1}
case $loop in setup|quick|test|test-fast|run|cmd:*) ;; *) echo "against.sh: unknown loop '$loop'" >&2; usage;; esac
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "against.sh: RUNS must be a positive number, not '$runs'" >&2; exit 2; }

work=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
ref=$(git -C "$work" rev-parse --verify --quiet "$ref_arg^{commit}") \
  || { echo "against.sh: '$ref_arg' is not a commit of $work (git fetch it first?)" >&2; exit 2; }
home=${AGAINST_HOME:-$HOME/.cache/mnist-mlops-against}
ref_dir=$home/${ref:0:12}
logs=$home/logs
mkdir -p "$logs"
# Both sides download from the same local copy of MNIST: the one the Makefile would find
# beside this checkout, unless MNIST_MIRROR names another (clones and the worktree live
# elsewhere, where ../shared is not).
if [ -z "${MNIST_MIRROR:-}" ] && [ -d "$work/../shared/data/mnist" ]; then
  MNIST_MIRROR=$(cd "$work/../shared/data/mnist" && pwd)
fi
export MNIST_MIRROR=${MNIST_MIRROR:-}

# The reference: a worktree with its own venv, built once from its own files.
if [ ! -e "$ref_dir/.venv/.installed" ]; then
  if [ ! -d "$ref_dir" ]; then
    git -C "$work" worktree add --detach --force "$ref_dir" "$ref" >/dev/null
  fi
  echo "against.sh: building the reference's venv (${ref:0:12}: its make setup)" >&2
  make -C "$ref_dir" setup >"$logs/setup-ref-${ref:0:12}.log" 2>&1 \
    || { echo "against.sh: the reference's make setup failed: $logs/setup-ref-${ref:0:12}.log" >&2; exit 1; }
fi
if [ "$loop" != setup ] && [ ! -e "$work/.venv/.installed" ]; then
  make -C "$work" setup >"$logs/setup-work.log" 2>&1
fi

# A fresh clone of one side: the reference's commit, or the working tree's HEAD with its
# uncommitted changes applied (new files that git does not ignore included).
fresh_clone() {  # side dest
  local side=$1 dest=$2
  if [ "$side" = ref ]; then
    git clone -q --no-checkout "$work" "$dest" && git -C "$dest" checkout -q --detach "$ref"
  else
    git -c advice.detachedHead=false clone -q "$work" "$dest"   # a detached checkout too
    (cd "$work" && git diff HEAD --binary) | (cd "$dest" && git apply --allow-empty)
    (cd "$work" && git ls-files --others --exclude-standard -z) \
      | (cd "$work" && xargs -0 -r cp --parents -t "$dest")
  fi
}

side_dir() { [ "$1" = ref ] && echo "$ref_dir" || echo "$work"; }

# One timed run of the loop on one side; prints "seconds rc counts".
one_run() {  # side i
  local side=$1 i=$2 dir slug log start rc=0 scratch=""
  dir=$(side_dir "$side")
  slug=${loop//[^A-Za-z0-9_-]/_}
  log=$logs/${slug:0:40}-$side-$i.log
  case $loop in
    setup|quick|run)
      scratch=$(mktemp -d "${TMPDIR:-/tmp}/against-$side.XXXXXX")
      fresh_clone "$side" "$scratch/repo" >&2
      if [ "$loop" != setup ]; then   # the side's venv, already built: not part of the loop
        ln -s "$dir/.venv" "$scratch/repo/.venv"
        touch "$scratch/repo/.venv/.installed"
      fi
      dir=$scratch/repo ;;
  esac
  start=$(date +%s.%N)
  case $loop in
    cmd:*) (cd "$dir" && PATH="$dir/.venv/bin:$PATH" AGAINST_WORK="$work" bash -c "${loop#cmd:}") \
             >"$log" 2>&1 || rc=$? ;;
    *) make -C "$dir" "$loop" >"$log" 2>&1 || rc=$? ;;
  esac
  local secs counts
  secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.3f", e - s}')
  counts=$(grep -Eo '[0-9]+ (passed|failed|skipped|errors?)' "$log" | tail -4 | paste -sd, - || true)
  [ -n "$scratch" ] && rm -rf "$scratch"
  printf '%.1f %d %s\n' "$secs" "$rc" "${counts// /_}"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)," \
     "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "loop: $loop, $runs run(s) per side; ref ${ref:0:12} ($(git -C "$work" log -1 --format=%cs "$ref")), work $(git -C "$work" rev-parse --short=12 HEAD)$(git -C "$work" diff --quiet HEAD || echo ' + uncommitted changes')"
declare -a ref_s=() work_s=()
for i in $(seq 1 "$runs"); do
  if [ $((i % 2)) = 1 ]; then order="ref work"; else order="work ref"; fi
  for side in $order; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    read -r secs rc counts < <(one_run "$side" "$i")
    printf '%-4s run %d: %8.1f s  rc %d  load before %s  %s\n' "$side" "$i" "$secs" "$rc" "$load" "${counts//_/ }"
    if [ "$side" = ref ]; then ref_s+=("$secs"); else work_s+=("$secs"); fi
  done
done
r=$(printf '%s\n' "${ref_s[@]}" | median)
w=$(printf '%s\n' "${work_s[@]}" | median)
printf 'median: ref %.1f s, work %.1f s, ratio work/ref %.2fx  (logs: %s)\n' "$r" "$w" \
  "$(awk -v w="$w" -v r="$r" 'BEGIN {print w / r}')" "$logs"
