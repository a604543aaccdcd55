#!/usr/bin/env bash
# Every GPU check in one go (issue 13's speed table), about 6-8 minutes on an H100/H200:
#   OUT=/some/dir bash scripts/gpu_check.sh
# writes $OUT/device.txt, $OUT/speed.md + speed_<cell>.json (ours vs the lightly reference loop, MFU,
# memory, views share), $OUT/speed_compiled.md (train.compile) and $OUT/tests.txt (the engine's
# and views' tests on the CUDA paths). Without lightly installed the reference rows are skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[test,bench]" \
        || .venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[test]"
fi
PY=.venv/bin/python
ref=""
$PY -c "import lightly" 2>/dev/null || ref="--no-reference"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c \
    "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } \
    > "$OUT/device.txt" 2>&1
# one process per cell, each with its own time limit: a slow cell (the DINO reference loop's
# per-image multi-crop transforms) costs its own row, not the table
: > "$OUT/speed.md"
for cell in simclr_r18_32 moco_v2_r18_32 simclr_r18_224 dino_vits16_224 mae_vits16_224; do
    timeout 100 $PY benchmarks/pretrain_speed.py --cells $cell --steps 30 --warmup 10 \
        --rounds 2 $ref --out "$OUT/speed_$cell.json" > "$OUT/speed_$cell.md" \
        2> "$OUT/speed_$cell.log" || echo "$cell: exit $? (see speed_$cell.log)" >> "$OUT/speed.md"
    cat "$OUT/speed_$cell.md" >> "$OUT/speed.md"
done
timeout 150 $PY benchmarks/pretrain_speed.py --cells simclr_r18_32,mae_vits16_224 --compile \
    --no-reference --steps 30 --warmup 15 --rounds 1 --out "$OUT/speed_compiled.json" \
    > "$OUT/speed_compiled.md" 2> "$OUT/speed_compiled.log"
timeout 60 $PY -m pytest -q -x tests/test_views.py > "$OUT/tests.txt" 2>&1
cat "$OUT"/device.txt "$OUT"/speed.md "$OUT"/speed_compiled.md
tail -3 "$OUT/tests.txt"
