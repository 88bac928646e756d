#!/usr/bin/env bash
# The ImageNet-network check on one CUDA GPU (issue 18), from the repository root:
#
#     OUT=/some/folder bash benchmarks/gpu_imagenet.sh
#     OUT=/tmp/x DEVICE=cpu STEPS=1 WARMUP=1 BATCH=4 MAKE=40 bash ...   # a CPU rehearsal
#
# Writes a random 224×224 image folder (stand-in for ImageNet), then benchmarks/gpu_imagenet.py:
# ResNet-34 BP, AugLocal (K=17, d=4, ImageNet rule) and DGL, fp32 and bf16, channels-last,
# images/s and max_memory_allocated per method, and AugLocal/BP memory next to the paper's ~0.6.
# Finally a one-epoch `training.train --amp fp16` run of tv_resnet18 checks the fp16 path end
# to end. Logs and the table go to $OUT. Sized for about 6 minutes on an H100/H200.
set -u
OUT=${OUT:?set OUT to the folder for the logs}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
STEPS=${STEPS:-150}
BATCH=${BATCH:-128}
WARMUP=${WARMUP:-10}
MAKE=${MAKE:-2560}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT

{ nvidia-smi -L || echo "no nvidia-smi"; } >"$OUT/env.log" 2>&1
timeout 420 "$PY" benchmarks/gpu_imagenet.py --root "$DATA" --make "$MAKE" --steps "$STEPS" \
    --warmup "$WARMUP" --batch-size "$BATCH" --device "$DEVICE" >"$OUT/imagenet_table.md" 2>"$OUT/imagenet.log"
echo "gpu_imagenet.py rc=$?"
cat "$OUT/imagenet_table.md"
if [ "$DEVICE" = cuda ]; then
    timeout 120 "$PY" -m training.train --method auglocal --arch tv_resnet18 --width 32 \
        --dataset imagefolder --data-root "$DATA" --image-size 112 --epochs 1 --batch-size 64 \
        --amp fp16 --channels-last --device cuda --no-progress --out "$DATA/fp16.pt" \
        >"$OUT/fp16.log" 2>&1
    echo "fp16 training rc=$?"; tail -2 "$OUT/fp16.log"
fi
