#!/usr/bin/env bash
# The GPU measurements in one call, each part under its own time limit inside an overall budget.
#
#   benchmarks/device/run.sh prepare          # here, with network: wheels into .whl/ (checked against 64 MiB)
#   benchmarks/device/run.sh                  # on the GPU machine, .whl/ sent with the tree (carry [".whl"])
#   benchmarks/device/run.sh --device cpu --tiny --threads 1    # the rehearsal on a CPU
#
# Options: --device cuda|cpu (default cuda), --tiny (small sizes), --budget SECONDS (default 460: the whole
# run, install included), --threads N (torch threads of every part). Output: JSON (and the log) under $OUT,
# or build/device-out when OUT is unset. A part that fails or runs out of time is recorded in summary.json
# and the next one runs.
set -u
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
if [ "${1:-}" = prepare ]; then
    shift
    exec "$PY" benchmarks/device/prepare.py "$@"
fi

DEVICE=cuda TINY=0 BUDGET=460 THREADS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --tiny) TINY=1; shift ;;
        --budget) BUDGET=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        *) echo "run.sh: unknown option $1 (see the comment at the top)" >&2; exit 2 ;;
    esac
done
OUT=${OUT:-build/device-out}
mkdir -p "$OUT"
PARTS=$(mktemp -d)
START=$(date +%s)
exec > >(tee "$OUT/run.log") 2>&1
TEE=$!
CORES=$(nproc)  # before OMP_NUM_THREADS is set: nproc follows it
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
[ -n "$THREADS" ] && export OMP_NUM_THREADS=$THREADS

# The carried wheels hold what the image lacks; they are built for its Python 3.12 only.
SITE=${SITE:-/tmp/residual-stream-site}
if ls .whl/*.whl >/dev/null 2>&1 && "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        || echo "run.sh: installing the wheels failed; going on with the interpreter's packages"
    export PYTHONPATH="$PWD:$SITE"
else
    echo "run.sh: no wheels installed (none in .whl/, or $("$PY" -V 2>&1) is not their Python 3.12); using the interpreter's packages"
    export PYTHONPATH="$PWD"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.cuda.is_available())'

# part NAME LIMIT_SECONDS COMMAND...: run under min(LIMIT, what is left of the budget); record rc and time.
part() {
    local name=$1 limit=$2 left
    shift 2
    left=$(( BUDGET - ($(date +%s) - START) ))
    if [ "$left" -lt 15 ]; then
        echo "== $name: skipped, ${left}s of the budget left"
        printf '%s\tskipped\t0\t%s\n' "$name" "$limit" >>"$PARTS/parts.tsv"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (at most ${limit}s): $*"
    local t0 rc
    t0=$(date +%s%N)
    timeout -k 10 "$limit" "$@"
    rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( ($(date +%s%N) - t0) / 1000000 ))" "$limit" >>"$PARTS/parts.tsv"
    echo "== $name: exit $rc"
}
T=${THREADS:+--threads $THREADS}

if [ "$TINY" = 1 ]; then
    part gpu_check 300 "$PY" benchmarks/gpu_check.py --device "$DEVICE" --size 64 --images 8 --steps 12 --channels 4 \
        --whole-tap 8 --seeds 1 --out "$OUT/gpu_check.txt"
    part fz 200 "$PY" benchmarks/device/fz_sweep.py --device "$DEVICE" $T --size 64 --tap-channels 8,4 --tap-steps 2 \
        --probe-steps 1 --lucent 1.1:B:0 --lucent-steps 1 --channel-batch 4 --tune-over 0 --batches 8 \
        --budget-s 150 --json "$OUT/fz_vs_lucent.json"
    part natural 120 "$PY" benchmarks/natural_pass.py --one-pass-only --device "$DEVICE" $T --images 40 --size 64 \
        --workers 1 --batch-size 10 --shard-size 20 --make-jobs 2 --decode-check 20 --json "$OUT/natural_pass.json"
    part ablation 60 "$PY" benchmarks/ablate_throughput.py --device "$DEVICE" $T --images 20 --batch-size 10 \
        --trials 2 --json "$OUT/ablation.json"
else
    WORKERS=$(( CORES > 4 ? CORES - 4 : 1 ))
    WORKERS=$(( WORKERS > 12 ? 12 : WORKERS ))
    part gpu_check 130 "$PY" benchmarks/gpu_check.py --device "$DEVICE" --out "$OUT/gpu_check.txt"
    # The sweep stops tuning in time to write its JSON before its limit.
    part fz 190 "$PY" benchmarks/device/fz_sweep.py --device "$DEVICE" $T --budget-s 160 --json "$OUT/fz_vs_lucent.json"
    part natural 100 "$PY" benchmarks/natural_pass.py --one-pass-only --device "$DEVICE" $T --images 20000 --size 224 \
        --workers "$WORKERS" --batch-size 100 --shard-size 1000 --make-jobs "$CORES" --decode-check 5000 \
        --json "$OUT/natural_pass.json"
    part ablation 30 "$PY" benchmarks/ablate_throughput.py --device "$DEVICE" $T --images 2000 --batch-size 100 \
        --trials 10 --json "$OUT/ablation.json"
fi

"$PY" - "$PARTS/parts.tsv" "$OUT/summary.json" "$DEVICE" "$TINY" "$BUDGET" "$START" "$CORES" <<'PYEOF'
import json, sys, time
tsv, out, device, tiny, budget, start, cores = sys.argv[1:]
parts = []
for line in open(tsv):
    name, rc, seconds, limit = line.rstrip("\n").split("\t")
    parts.append({"part": name, "exit": None if rc == "skipped" else int(rc), "skipped": rc == "skipped",
                  "timed_out": rc in ("124", "137"), "seconds": int(seconds) / 1000, "limit_s": int(limit)})
try:
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    versions = {"torch": torch.__version__, "torchvision": __import__("torchvision").__version__}
except Exception as error:  # the summary is written whatever broke
    gpu, versions = None, {"error": repr(error)}
json.dump({"device": device, "gpu": gpu, "tiny": tiny == "1", "budget_s": int(budget), "cpu_cores": int(cores),
           "wall_s": time.time() - int(start), **versions, "parts": parts,
           "all_passed": all(p["exit"] == 0 for p in parts)}, open(out, "w"), indent=1)
print(open(out).read())
PYEOF
rm -rf "$PARTS"
# Let tee write the log's last lines before the run counts as over.
exec >&- 2>&-
wait "$TEE" 2>/dev/null || true
