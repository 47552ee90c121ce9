#!/usr/bin/env bash
# Every GPU benchmark in one run, written to one JSON file (bench/gpu_collect.py assembles it):
#   fragile      ResNet-50, one 500x375 image, r=0.2              (bench/fragile.py)
#   pgd          PGD on resnet18 at 224 px, against the bare passes (bench/attacks.py --skip-suite)
#   autoattack   the AutoAttack set on resnet18 at 224 px           (bench/autoattack.py)
#   corruptions  the 15 corruptions at 224 px                      (bench/corruptions.py)
#   distributed  one worker per GPU, when there are several         (bench/distributed.py, if present)
# Random weights throughout (nothing is downloaded). Each benchmark runs under a timeout cut from one
# total budget (default 450 s, so the whole script stays under 8 minutes); a failure or a timeout is
# recorded in the JSON and the next benchmark runs.
#
#   bench/gpu.sh [--quick] [--out FILE] [--budget SECONDS]
#     --quick   small sizes on whatever device there is (the CPU here): checks the script, not the GPU
#     --out     default: $OUT/gpu_bench.json when $OUT is set, else var/bench/gpu.json
# The Python is $PYTHON, else .venv/bin/python when there is one, else python3.
set -uo pipefail
cd "$(dirname "$0")/.."

QUICK=0
BUDGET=450
OUTFILE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) OUTFILE="$2"; shift ;;
    --budget) BUDGET="$2"; shift ;;
    *) echo "usage: bench/gpu.sh [--quick] [--out FILE] [--budget SECONDS]" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$OUTFILE" ]; then
  if [ -n "${OUT:-}" ]; then OUTFILE="$OUT/gpu_bench.json"; else OUTFILE="var/bench/gpu.json"; fi
fi
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
RUN=$(mktemp -d "${TMPDIR:-/tmp}/gpu-bench.XXXXXX")
START=$(date +%s)

GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
if [ "$GPUS" -gt 0 ]; then DEV=cuda; else DEV=cpu; fi
# a peer library is there when it can be found (importing ART alone takes seconds)
has() { "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }
if [ "$QUICK" = 0 ] && [ "$DEV" = cpu ]; then
  echo "bench/gpu.sh: no CUDA device; run with --quick for the CPU check" >&2
fi

# name, cap in seconds, then the command. The timeout is the cap or what is left of the budget
# (keeping 15 s for each benchmark still to come), whichever is smaller.
NAMES=()
bench() {
  local name=$1 cap=$2 left; shift 2
  NAMES+=("$name")
  left=$(( BUDGET - ($(date +%s) - START) - 15 * REMAINING ))
  REMAINING=$((REMAINING - 1))
  local limit=$(( cap < left ? cap : left ))
  if [ "$limit" -lt 5 ]; then
    printf '{"skipped": "the total budget of %s s was spent"}\n' "$BUDGET" >"$RUN/$name.meta.json"
    return
  fi
  echo "== $name (timeout ${limit} s): $*" >&2
  local t0 rc
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" >"$RUN/$name.out" 2>"$RUN/$name.err"
  rc=$?
  "$PY" - "$RUN/$name.meta.json" "$rc" "$t0" "$limit" "$@" <<'EOF'
import json, sys, time
path, rc, t0, limit, *cmd = sys.argv[1:]
json.dump({"cmd": cmd, "rc": int(rc), "timed_out": int(rc) in (124, 137), "timeout_s": int(limit),
           "wall_s": round(time.time() - float(t0), 1)}, open(path, "w"))
EOF
  tail -n 3 "$RUN/$name.err" >&2
}
skip() {  # name, reason
  NAMES+=("$1")
  REMAINING=$((REMAINING - 1))
  "$PY" -c "import json, sys; json.dump({'skipped': sys.argv[2]}, open(sys.argv[1], 'w'))" "$RUN/$1.meta.json" "$2"
}

REMAINING=5
AA_SKIP=()
has torchattacks || AA_SKIP+=(--skip torchattacks --skip torchattacks-shipped)
has art || AA_SKIP+=(--skip art)
REF=()
has imagecorruptions && has corrupt_tta || REF=(--no-reference)
if [ "$QUICK" = 1 ]; then
  bench fragile 120 "$PY" bench/fragile.py --device "$DEV" --model demo --image-size 40x32 --repeat 1 --naive-crops 20
  bench pgd 120 "$PY" bench/attacks.py --device "$DEV" --model demo --batch 16 --steps 5 --repeats 1 --skip-suite
  bench autoattack 150 "$PY" bench/autoattack.py --device "$DEV" --model demo --samples 8 --eps 0.3 \
    --skip torchattacks --skip torchattacks-shipped --skip art --out "$RUN/autoattack.json"
  bench corruptions 120 "$PY" bench/corruptions.py --device "$DEV" --size 32 --n 2 --repeats 1 "${REF[@]}"
else
  # ART's AutoAttack runs on NumPy between batches and takes minutes at 224 px: left out here.
  bench fragile 90 "$PY" bench/fragile.py --device "$DEV" --model resnet50 --image-size 500x375 --r 0.2
  bench pgd 90 "$PY" bench/attacks.py --device "$DEV" --model resnet18 --size 224 --batch 128 --steps 20 \
    --repeats 3 --skip-suite
  bench autoattack 150 "$PY" bench/autoattack.py --device "$DEV" --model resnet18 --size 224 --samples 100 \
    --eps 0.03137 --skip art "${AA_SKIP[@]}" --out "$RUN/autoattack.json"
  bench corruptions 75 "$PY" bench/corruptions.py --device "$DEV" --size 224 --n 32 --repeats 2 "${REF[@]}"
fi
if [ ! -f bench/distributed.py ]; then
  skip distributed "bench/distributed.py is not in this tree"
elif [ "$GPUS" -lt 2 ]; then
  skip distributed "$GPUS GPU(s): the distributed benchmark needs at least 2"
else
  bench distributed 120 "$PY" bench/distributed.py --device cuda --gpus "$GPUS" --workers "1,$GPUS" \
    --out "$RUN/distributed.json"
fi

mkdir -p "$(dirname "$OUTFILE")"
"$PY" bench/gpu_collect.py --run "$RUN" --out "$OUTFILE" --quick "$QUICK" --budget "$BUDGET" \
  --wall "$(( $(date +%s) - START ))" "${NAMES[@]}"
rc=$?
rm -rf "$RUN"
exit $rc
