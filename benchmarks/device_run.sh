#!/usr/bin/env bash
# The one prepared device check: on a lent GPU or TPU it measures, in about 8 minutes,
# what the project needs to know about the device. Every step runs under its own time
# limit, so one that hangs costs only its share; all output is teed to OUT_DIR/log.
#
#   bash benchmarks/device_run.sh results/nvidia-h200       # on the device
#   BUDGET=tiny bash benchmarks/device_run.sh /tmp/check    # seconds, on any CPU (the test)
#
# Steps: the device's facts (benchmarks/device_facts.py: device kind, datasheet row,
# memory, fp32 default/highest and bf16 matmuls, streams, the cost of one more kernel);
# the seed MLP, MLP widths, ResNet-50 (b=1..4, for C2), decode, prefill and MoE layer
# sweeps on their quick grids, sharing one calibration and one device profile (the first
# sweep measures them); the prediction benchmark (OUT_DIR/prediction.md); the report
# (OUT_DIR/REPORT.md). Then commit OUT_DIR (its compilation cache is ignored) and say in
# WORKSPACE.md on which card it ran.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: bash benchmarks/device_run.sh OUT_DIR}"
budget="${BUDGET:-device}"
python="${PYTHON:-python}"
mkdir -p "$out" || exit 2
log="$out/log"
: >"$log"
printf 'compilation_cache/\n' >"$out/.gitignore"
started=$(date +%s)
failed=0

step() { # step NAME SECONDS COMMAND...: one step under its own limit, its status logged
  local name=$1 limit=$2 t0 rc
  shift 2
  echo "== $name (limit ${limit} s): $*" | tee -a "$log"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc in $(($(date +%s) - t0)) s" | tee -a "$log"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

if [ "$budget" = "tiny" ]; then
  configs="mlp"
  flags=(--batch_sizes=1,2 --time_budget_s=0.02 --min_reps=3 --warmup_reps=1)
  limit=240
else
  configs="mlp mlp_widths resnet50 decode prefill moe_layer"
  flags=()
  limit=100
fi
common=(--noplot --predict_for= "--model_profile=$out/profile.json"
  "--compilation_cache_dir=$out/compilation_cache")

step "device facts" 90 "$python" benchmarks/device_facts.py "$out/device_facts.json" \
  --budget="$budget"
for name in $configs; do
  extra=()
  [ "$name" = "resnet50" ] && extra=(--batch_sizes=1,2,3,4)
  # Every sweep after the first starts from the calibration the first one measured.
  if [ -f "$out/calibration.json" ] && [ ! -f "$out/$name/calibration.json" ]; then
    mkdir -p "$out/$name" && cp "$out/calibration.json" "$out/$name/calibration.json"
  fi
  step "sweep $name" "$limit" "$python" -m experiments.sweep \
    --flagfile="configs/quick/$name.flags" --out_dir="$out/$name" \
    "${common[@]}" "${flags[@]}" "${extra[@]}"
  if [ ! -f "$out/calibration.json" ] && [ -f "$out/$name/calibration.json" ]; then
    cp "$out/$name/calibration.json" "$out/calibration.json"
  fi
done
step "prediction benchmark" 60 bash -c \
  "'$python' benchmarks/prediction.py '$out' > '$out/prediction.md'; rc=\$?; cat '$out/prediction.md'; exit \$rc"
step "report" 120 "$python" -m experiments.report "$out" --out_dir="$out"
echo "== all steps: $(($(date +%s) - started)) s, $failed failed" | tee -a "$log"
[ "$failed" -eq 0 ]
