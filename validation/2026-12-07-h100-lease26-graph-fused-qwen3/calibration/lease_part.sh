#!/usr/bin/env bash
# One part of a validation lease on a GPU machine (docs/validation.md), run from the repository root with the
# wheels the machine lacks in .whl/ (simpy, tomli_w, attrs); parts of one lease run back to back on one machine.
# Results come back as $OUT/valPART.tar.gz: join the parts with `python -m live.protocol merge`, then `compare`.
# usage: bash validation/lease.sh PART [--dry-run]  (1: graph olmoe+mixtral; 2: graph qwen1.5+qwen3, then the device calibration;
#                                  3: eager olmoe+mixtral, its own runtime calibration;
#                                  4: graph olmoe+qwen1.5+qwen3, then the device calibration: one command;
#                                  5: eager qwen1.5+qwen3, its own runtime calibration;
#                                  6: graph olmoe at batch 1, then the device calibration of olmoe: a short one;
#                                  7: graph mixtral alone, after part 4 on the same machine;
#                                  8: eager olmoe at batch 1, then the device calibration of olmoe: a short one;
#                                  9: graph with the fused experts kernel, part 4's configurations, then the device
#                                     calibration of the four models (part 11's Mixtral too);
#                                 10: part 9 for OLMoE alone (6 configurations), then its device calibration: a short one;
#                                 11: graph mixtral alone with the fused experts kernel, after part 9 on the same machine;
#                                 12: part 5 (eager qwen1.5+qwen3, its own runtime calibration), then the device
#                                     calibration of the four models, as part 9's;
#                                 13: part 3 (eager olmoe+mixtral, its own runtime calibration), then the device
#                                     calibration of the four models;
#                                 14: part 12's qwen3 alone (5 configurations), then the device calibration of
#                                     qwen3: a short one;
#                                 15: part 9's qwen1.5 alone (4 configurations), then the device calibration of
#                                     qwen1.5 with and without its shared expert's gate: a short one;
#                                 16: part 9's qwen3 alone (5 configurations), then the device calibration of qwen3;
#                                 17: part 11 (mixtral fused, 5 configurations), then the device calibration of
#                                     mixtral: parts 10, 15, 16 and 17 are the fused matrix in four short parts)
set -u
case "$#:${1:-}:${2:-}" in 1:[1-9]: | 2:[1-9]:--dry-run | 1:1[0-7]: | 2:1[0-7]:--dry-run) ;;
  *) echo "usage: bash validation/lease.sh PART (1-17) [--dry-run]" >&2; exit 2;; esac
A="--only olmoe-10-lru --only olmoe-25-lfu --only olmoe-50-fld --only olmoe-25-lru-nextlayer --only olmoe-10-leaststale-topk --only olmoe-25-lru-b4 --only mixtral8l-25-lru --only mixtral8l-50-lfu --only mixtral8l-25-leaststale-nextlayer --only mixtral8l-50-fld-scorepct --only mixtral8l-25-lru-b2"
B="--only qwen15-10-leaststale --only qwen15-25-lru-nextlayer --only qwen15-50-lfu --only qwen15-25-lfu-b4 --only qwen3-12l-10-lru --only qwen3-12l-25-fld-topk --only qwen3-12l-50-lfu --only qwen3-12l-25-lru-nextlayer --only qwen3-12l-25-lru-b4"
case $1 in
  1) ONLY=$A; MODE="--decode graph --calibrate-runtime hf-graph";;
  2) ONLY=$B; MODE="--decode graph --calibrate-runtime hf-graph";;
  3) ONLY=$A; MODE="--decode eager --calibrate-runtime hf-eager";;
  4) ONLY="${A%% --only mixtral8l*} $B"; MODE="--decode graph --calibrate-runtime hf-graph";;
  5) ONLY=$B; MODE="--decode eager --calibrate-runtime hf-eager";;
  6) ONLY="${A%% --only olmoe-25-lru-b4*}"; MODE="--decode graph --calibrate-runtime hf-graph";;
  7) ONLY="--only mixtral8l${A#* --only mixtral8l}"; MODE="--decode graph --calibrate-runtime hf-graph";;
  8) ONLY="${A%% --only olmoe-25-lru-b4*}"; MODE="--decode eager --calibrate-runtime hf-eager";;
  9) ONLY="${A%% --only mixtral8l*} $B"; MODE="--decode graph --experts fused --calibrate-runtime hf-graph-fused";;
  10) ONLY="${A%% --only mixtral8l*}"; MODE="--decode graph --experts fused --calibrate-runtime hf-graph-fused";;
  11) ONLY="--only mixtral8l${A#* --only mixtral8l}"; MODE="--decode graph --experts fused --calibrate-runtime hf-graph-fused";;
  12) ONLY=$B; MODE="--decode eager --calibrate-runtime hf-eager";;
  13) ONLY=$A; MODE="--decode eager --calibrate-runtime hf-eager";;
  14) ONLY="--only qwen3${B#* --only qwen3}"; MODE="--decode eager --calibrate-runtime hf-eager";;
  15) ONLY="${B%% --only qwen3*}"; MODE="--decode graph --experts fused --calibrate-runtime hf-graph-fused";;
  16) ONLY="--only qwen3${B#* --only qwen3}"; MODE="--decode graph --experts fused --calibrate-runtime hf-graph-fused";;
  17) ONLY="--only mixtral8l${A#* --only mixtral8l}"; MODE="--decode graph --experts fused --calibrate-runtime hf-graph-fused";;
esac
if [ "${2:-}" = --dry-run ]; then echo "part $1: $MODE $ONLY"; exit 0; fi  # what the part runs, without a GPU
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/nb
V=/tmp/val$1
mkdir -p $V/calibration
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $V/calibration/gpu.txt; nproc >> $V/calibration/gpu.txt
python3 scripts/source_digest.py > $V/calibration/source_digest.txt  # which commit ran: scripts/process_lease.sh finds it
cat $V/calibration/gpu.txt
if grep -q H200 $V/calibration/gpu.txt && [ "$1" = 1 ]; then
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_live_graph.py tests/test_live_prefetch_gpu.py tests/test_live_batch.py > $V/calibration/gpu_tests.log 2>&1
  tail -2 $V/calibration/gpu_tests.log
fi
rm -rf /tmp/runs$1
python3 -m live.protocol run validation/matrix.toml --out /tmp/runs$1 $MODE $ONLY 2> $V/calibration/run.log
echo "run rc $? at $(( $(date +%s) - T0 ))s" | tee -a $V/calibration/run.log
grep -v Warn $V/calibration/run.log | grep -E "TTFT|error" | tail -12
cp -r /tmp/runs$1/* $V/
tar czf $OUT/val$1.tar.gz -C /tmp val$1
MODELS="--model olmoe-1b-7b --model mixtral-8x7b --model qwen1.5-moe-a2.7b --model qwen3-30b-a3b"
{ [ "$1" = 6 ] || [ "$1" = 8 ] || [ "$1" = 10 ]; } && MODELS="--model olmoe-1b-7b"
[ "$1" = 14 ] && MODELS="--model qwen3-30b-a3b"
[ "$1" = 15 ] && MODELS="--model qwen1.5-moe-a2.7b"
[ "$1" = 16 ] && MODELS="--model qwen3-30b-a3b"
[ "$1" = 17 ] && MODELS="--model mixtral-8x7b"
# parts 9 and 12 also time Qwen1.5 without its shared expert's gate (a table of its own, q15plain): what the gate adds
{ [ "$1" = 9 ] || [ "$1" = 12 ] || [ "$1" = 15 ]; } && MODELS="$MODELS --model q15plain:preset=qwen1.5-moe-a2.7b,shared_gate=false"
if [ "$1" = 2 ] || [ "$1" = 4 ] || [ "$1" = 6 ] || [ "$1" = 8 ] || [ "$1" = 9 ] || [ "$1" = 10 ] || [ "$1" = 12 ] || [ "$1" = 13 ] || [ "$1" = 14 ] || [ "$1" = 15 ] || [ "$1" = 16 ] || [ "$1" = 17 ]; then
  python3 -m emu.cli calibrate --quick --no-progress $MODELS --out $V/calibration/dev.toml > $V/calibration/calibrate.log 2>&1
  echo "calibrate rc $? at $(( $(date +%s) - T0 ))s" | tee -a $V/calibration/calibrate.log
  tar czf $OUT/val$1.tar.gz -C /tmp val$1
fi
ls -la $OUT
