#!/usr/bin/env bash
# The one prepared device check: on a lent GPU or TPU it measures, in about 8 minutes,
# what the project needs to know about the device. Every step runs under its own time
# limit (together about 8 minutes), so one that hangs costs only its share; all output is
# teed to OUT_DIR/log.
#
#   bash benchmarks/device_run.sh results/nvidia-h200       # on the device
#   BUDGET=tiny bash benchmarks/device_run.sh /tmp/check    # seconds, on any CPU (the test)
#
# Steps, in order:
#   1. device facts (benchmarks/device_facts.py): device kind, datasheet row,
#      memory_stats(), an 8192 matmul in fp32 default vs highest vs bf16, 64 MiB vs 1 GiB
#      streams, chains of 1/8/64 tiny dependent ops (the cost of one more kernel)
#   2. isolation and calibration as the sweep does them: the smoke sweep with
#      --recalibrate; then a point sized past the device's memory, recorded as out of
#      memory, and the sweep resumed on a fresh worker for the next point
#   3. sweeps on their quick grids, sharing one calibration and one device profile (the
#      first sweep measures them): the seed MLP, MLP widths, decode at b=1,16, prefill,
#      the MoE layer with its dispatch candidates (each record keeps every candidate's
#      time), ResNet-50 at b=1..4 (C2 judged on a GPU)
#   4. the MoE dispatch benchmark and the sharding-overhead benchmark
#   5. the prediction benchmark (OUT_DIR/prediction.md) and the report (OUT_DIR/REPORT.md)
# Then commit OUT_DIR (its compilation cache is ignored) and say in WORKSPACE.md on which
# card it ran and what it showed.
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

common=(--noplot --predict_for= "--model_profile=$out/profile.json"
  "--compilation_cache_dir=$out/compilation_cache")
if [ "$budget" = "tiny" ]; then
  configs="mlp"
  flags=(--batch_sizes=1,2 --time_budget_s=0.02 --min_reps=3 --warmup_reps=1)
  limit=240
else
  configs="mlp mlp_widths decode prefill moe_layer resnet50"
  flags=()
  limit=45
fi

sweep() { # sweep NAME LIMIT FLAGS...: a sweep into OUT_DIR/NAME, starting from the
  # calibration the first sweep measured
  local name=$1 limit=$2
  shift 2
  if [ -f "$out/calibration.json" ] && [ ! -f "$out/$name/calibration.json" ]; then
    mkdir -p "$out/$name" && cp "$out/calibration.json" "$out/$name/calibration.json"
  fi
  # After the flags (a flagfile names an --out_dir of its own): OUT_DIR and the shared files.
  step "sweep $name" "$limit" "$python" -m experiments.sweep "$@" "${common[@]}" \
    --out_dir="$out/$name"
  if [ ! -f "$out/calibration.json" ] && [ -f "$out/$name/calibration.json" ]; then
    cp "$out/$name/calibration.json" "$out/calibration.json"
  fi
}

step "device facts" 45 "$python" benchmarks/device_facts.py "$out/device_facts.json" \
  --budget="$budget"
if [ "$budget" != "tiny" ]; then
  sweep smoke 45 --flagfile=configs/smoke.flags --recalibrate
  # 262144² fp32 weights are 256 GiB, past any device's memory: that point is recorded
  # out of memory, and a fresh worker measures the next one.
  sweep out_of_memory 40 --model=mlp --depths=1 --widths=262144,256 --batch_sizes=1 \
    --model_profile=off
fi
for name in $configs; do
  extra=()
  case "$name" in
  decode) extra=(--batch_sizes=1,16) ;;
  resnet50) extra=(--batch_sizes=1,2,3,4) ;;
  esac
  sweep "$name" "$limit" --flagfile="configs/quick/$name.flags" "${flags[@]}" "${extra[@]}"
done
if [ "$budget" != "tiny" ]; then
  step "moe dispatch benchmark" 30 bash -c \
    "'$python' benchmarks/moe_dispatch.py --tokens=1,16,256,1024 --copies=4 | tee '$out/moe_dispatch.md'"
  step "sharding overhead benchmark" 30 bash -c \
    "'$python' benchmarks/sharding_overhead.py --rounds=3 | tee '$out/sharding_overhead.md'"
fi
step "prediction benchmark" 20 bash -c \
  "'$python' benchmarks/prediction.py '$out' > '$out/prediction.md'; rc=\$?; cat '$out/prediction.md'; exit \$rc"
step "report" 45 "$python" -m experiments.report "$out" --out_dir="$out"
echo "== all steps: $(($(date +%s) - started)) s, $failed failed" | tee -a "$log"
[ "$failed" -eq 0 ]
