#!/usr/bin/env bash
# One prepared check of evo on a GPU machine with no network (issue 9, item 17). From the repo root:
#
#     bash bench/gpu_check.sh                        # about 10 minutes on one H100/H200
#
# 1. prepares the gpu preset from a local text file (no download): prepare.py --preset gpu --text
# 2. runs seed_train.py for the gpu preset's full budget (300 s of training, compile not counted)
# 3. runs `evo run --operator tweak --max-candidates 3` (seed + 3 children, 1 replicate, no
#    confirmation) on TWEAK_PRESET: smoke by default, since 4 evaluations of the gpu preset take
#    about 25 minutes; TWEAK_PRESET=gpu runs the full-size one
# 4. prints a table: tok/s, MFU, peak VRAM, val_bpb, compile seconds, evaluation seconds and the
#    harness overhead per evaluation; it is also written to $WORK/gpu_check.md
#
# Settings (environment):
#   PYTHON         interpreter with evo and torch installed (default: .venv/bin/python, else python3)
#   TEXT           local corpus (default: ../shared/data/tinyshakespeare.txt)
#   SEED_PRESET    preset of the seed run (default gpu); TWEAK_PRESET as above
#   WORK           folder for caches, logs and the archive (default: a new one under /tmp)
#   SEED_TIMEOUT   seconds before the seed run is stopped (default 600)
# A CPU rehearsal of the whole script: SEED_PRESET=smoke bash bench/gpu_check.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
TEXT=${TEXT:-../shared/data/tinyshakespeare.txt}
SEED_PRESET=${SEED_PRESET:-gpu}
TWEAK_PRESET=${TWEAK_PRESET:-smoke}
SEED_TIMEOUT=${SEED_TIMEOUT:-600}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/evo-gpu-check.XXXXXX")}
WORK=$(mkdir -p "$WORK" && cd "$WORK" && pwd)
export EVO_CACHE_DIR="$WORK/cache" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
unset EVO_PRESET EVO_COMPILE

if [[ ! -f "$TEXT" ]]; then
    echo "gpu_check: no corpus at $TEXT; set TEXT=PATH to a local text file." >&2
    exit 2
fi
if ! "$PYTHON" -c "import torch, evo" 2>/dev/null; then
    echo "gpu_check: $PYTHON cannot import torch and evo; set PYTHON to the interpreter of the environment evo is installed in." >&2
    exit 1
fi
"$PYTHON" - <<'EOF'
import torch
if torch.cuda.is_available():
    print(f"gpu_check: torch {torch.__version__}, {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}")
else:
    print(f"gpu_check: torch {torch.__version__}, no CUDA device: a CPU rehearsal (MFU and VRAM read 0)")
EOF
echo "gpu_check: working in $WORK"
started=$SECONDS

# 1. data and tokenizer, from the local file only
for preset in $(printf '%s\n' "$SEED_PRESET" "$TWEAK_PRESET" | sort -u); do
    "$PYTHON" prepare.py --preset "$preset" --text "$TEXT" | sed "s/^/  [prepare $preset] /"
done

# 2. the seed for its preset's full budget, by hand (scored in-process; the log says how long that took)
mkdir -p "$WORK/seed"
cp prepare.py "$WORK/seed/prepare.py"
# seed_train.py with the preset's model and batch size written in, as `evo run` starts from it
"$PYTHON" -c "import sys; from pathlib import Path; from evo.launch.apparatus import seed_for; sys.stdout.write(seed_for(Path('prepare.py'), sys.argv[1], Path('seed_train.py').read_text(), 'seed_train.py'))" "$SEED_PRESET" > "$WORK/seed/train.py"
( cd "$WORK/seed" && EVO_PRESET="$SEED_PRESET" \
    timeout "$SEED_TIMEOUT" "$PYTHON" train.py > train.log 2>&1 ) || {
    echo "gpu_check: the seed run failed (exit $?); its log ends:" >&2
    tail -n 30 "$WORK/seed/train.log" >&2
    exit 1
}
echo "gpu_check: seed run done after $((SECONDS - started)) s"

# 3. a 3-candidate tweak run through the real harness
mkdir -p "$WORK/tweak"
( cd "$WORK/tweak" && "$PYTHON" -m evo run --name gpu-check --preset "$TWEAK_PRESET" --operator tweak \
    --max-candidates 3 --replicates 1 --temperature 0.001 --no-confirm \
    --startup-allowance 300 --eval-allowance 120 \
    --prepare "$ROOT/prepare.py" --seed-train "$ROOT/seed_train.py" \
    --storage "sqlite:///$WORK/tweak/evo.db" > run.log 2>&1 ) || {
    echo "gpu_check: the tweak run failed (exit $?); its log ends:" >&2
    tail -n 30 "$WORK/tweak/run.log" >&2
    exit 1
}
echo "gpu_check: tweak run done after $((SECONDS - started)) s"

# 4. the table
"$PYTHON" bench/gpu_check_table.py "$WORK" "$SEED_PRESET" "$TWEAK_PRESET" | tee "$WORK/gpu_check.md"
echo "gpu_check: $((SECONDS - started)) s in all; table in $WORK/gpu_check.md"
