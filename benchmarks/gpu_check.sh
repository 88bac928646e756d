#!/usr/bin/env bash
# One short check on a machine with one CUDA GPU (issue 8), from the repository root:
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh            # DEVICE=cpu: a rehearsal
#
# a. the GPU and the versions; b. torchrun --nproc_per_node=1 on digits with --device cuda
# (backend nccl) for bp, auglocal and dgl, each checkpoint evaluated again in one CPU process,
# and a run that dies after its first epoch resumed under torchrun; c. benchmarks/memory.py's
# CUDA peaks next to the saved-tensor counts; d. the CUDA tests and tests/test_distributed.py.
# Every step is time-boxed and all together stop after $BUDGET seconds (270); logs go to $OUT,
# a summary to stdout and $OUT/summary.txt. Two NCCL ranks cannot share one GPU, hence one
# process per torchrun. On the H100 machine each torchrun took about 20 s (mostly starting
# CUDA) and a–c 2.5 minutes; tests/test_distributed.py (9 torchruns) needs several more, so
# give BUDGET=420 for all of it (with BUDGET=210 one of its tests ran).
set -u
OUT=${OUT:?set OUT to the folder for the logs}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-270}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NCCL_DEBUG=VERSION  # NCCL says so when it starts
RUNS=$(mktemp -d)   # checkpoints stay here: few files may come back from $OUT
trap 'rm -rf "$RUNS"' EXIT

summary() { echo "$*" | tee -a "$OUT/summary.txt"; }

# step NAME SECONDS COMMAND...: run it time-boxed (within what is left of $BUDGET), its
# output appended to $OUT/NAME.log
step() {
    local name=$1 limit=$2 start=$SECONDS rc command="${*:3}"
    shift 2
    ((limit = limit < BUDGET - SECONDS ? limit : BUDGET - SECONDS))
    if ((limit < 5)); then
        summary "[$name] skipped, out of time: ${command:0:120}"
        return 1
    fi
    echo "\$ $command" >>"$OUT/$name.log"
    timeout "$limit" "$@" >>"$OUT/$name.log" 2>&1
    rc=$?
    summary "[$name] rc=$rc $((SECONDS - start))s: ${command:0:120}"
    return $rc
}

TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node=1)  # a free port

train_args() {  # train_args METHOD OUT: a small digits run, 2 epochs
    echo --method "$1" --arch resnet14 --width 16 --dataset digits --epochs 2 \
        --batch-size 64 --lr 0.1 --seed 0 --device "$DEVICE" --no-progress --out "$2"
}

# a. the machine
{ nvidia-smi -L || echo "no nvidia-smi"
  "$PY" -c 'import sys, torch, torchvision, torch.distributed as d
print("python", sys.version.split()[0], "torch", torch.__version__, "torchvision",
      torchvision.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available(),
      "nccl", d.is_nccl_available() and torch.cuda.nccl.version())'
} >"$OUT/env.log" 2>&1
summary "$(cat "$OUT/env.log")"

# b. torchrun with one process: nccl on CUDA, gloo on CPU
for method in bp auglocal dgl; do
    step train 45 "${TORCHRUN[@]}" -m training.train $(train_args $method "$RUNS/$method.pt")
done
step train 45 "${TORCHRUN[@]}" tests/ddp_crash_worker.py $(train_args bp "$RUNS/resumed.pt")
step train 45 "${TORCHRUN[@]}" -m training.train $(train_args bp "$RUNS/resumed.pt") --resume
step train 30 "$PY" - "$RUNS" <<'EOF'
"""Each checkpoint in one CPU process: its test accuracy against the one it recorded."""
import sys
from pathlib import Path

import torch

from training import data, load_checkpoint
from training.train import evaluate

test = data.load_split("digits", "test")
for name in ("bp", "auglocal", "dgl", "resumed"):
    path = Path(sys.argv[1]) / f"{name}.pt"
    if not path.exists():
        print(f"CHECK {name}: no checkpoint")
        continue
    model, meta = load_checkpoint(path)
    _, acc = evaluate(model, test, batch_size=256, device=torch.device("cpu"))
    epochs = meta["metrics"]["epochs"]
    print(f"CHECK {name}: epochs {[r['epoch'] for r in epochs]}, world_size "
          f"{[r.get('world_size') for r in epochs]}, test acc on CPU {acc:.4f} "
          f"(recorded {meta['metrics']['test_acc']:.4f})")
EOF
{ grep -h "^CHECK" "$OUT/train.log"; grep -ho "NCCL version.*" "$OUT/train.log" | sort | uniq -c
} | tee -a "$OUT/summary.txt"

# c. peak memory of one step: ResNet-32 and ResNet-110 at batch 128 and 1024
if [ "$DEVICE" = cuda ]; then
    step memory 100 "$PY" benchmarks/memory.py --device cuda --batches 128 1024
else
    step memory 120 "$PY" benchmarks/memory.py --device cpu --archs resnet32 --quick
fi
grep "^|" "$OUT/memory.log" | tee -a "$OUT/summary.txt"

# d. tests; test_cka and test_notebook need ckatorch and nbclient, absent on the GPU machine
step pytest 45 "$PY" -m pytest -q -p no:cacheprovider tests --ignore=tests/test_cka.py \
    --ignore=tests/test_notebook.py -k "cuda or gpu"
step pytest 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_distributed.py
grep -E "(passed|failed|error|skipped).* in [0-9.]+s" "$OUT/pytest.log" | tee -a "$OUT/summary.txt"
