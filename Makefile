# make setup: .venv with the toolkit and its test dependencies (+ Fashion-MNIST when root)
# make test:  setup, then the test suite
# make demo:  setup, then the main job on the embedded Fashion-MNIST
# make reproduce: setup, then the paper's findings with verdicts (docs/reproduction.md)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
DEMO_OUT ?= demo-out

.PHONY: setup test demo reproduce dataset clean

setup: $(STAMP) dataset

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

dataset:
	@if [ ! -f $(FASHION_MNIST) ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) || \
	      echo "warning: could not install dataset-fashion-mnist; tests that need it skip"; \
	  else \
	    echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'" \
	         "or pass --data-root to a folder with its idx files"; \
	  fi; \
	fi

test: setup
	$(PY) -m pytest -q

# The main job, CPU-sized: four networks on a 20k-image Fashion-MNIST subset, then the report.
# Every network has its own seed; the two BP seeds are the report's reference group, whose pair
# is the noise ceiling of the layer-matched CKA and the null of the tests against it.
# Finished checkpoints are reused (--resume), so a second run only redoes the analyses.
# --amp auto: bf16 + channels-last where the CPU has bf16 units (printed), float32 elsewhere.
DEMO_TRAIN := --arch resnet20 --width 16 --dataset fashion-mnist --subset 20000 --epochs 3 \
	--batch-size 128 --lr 0.1 --threads 2 --amp auto --eval-images 2000 --resume

demo: setup
	$(PY) -m training.train --method bp --seed 0 $(DEMO_TRAIN) --out $(DEMO_OUT)/bp.pt
	$(PY) -m training.train --method auglocal --aux-depth 2 --pyramid-coeff 0.5 --seed 2 \
	  $(DEMO_TRAIN) --out $(DEMO_OUT)/auglocal.pt
	$(PY) -m training.train --method dgl --seed 3 $(DEMO_TRAIN) --out $(DEMO_OUT)/dgl.pt
	$(PY) -m training.train --method bp --seed 1 $(DEMO_TRAIN) --out $(DEMO_OUT)/bp_seed1.pt
	$(PY) -m analyses.report --ckpt bp=$(DEMO_OUT)/bp.pt,$(DEMO_OUT)/bp_seed1.pt \
	  auglocal=$(DEMO_OUT)/auglocal.pt dgl=$(DEMO_OUT)/dgl.pt --n 1000 --n-train 5000 --n-test 1000 \
	  --cache $(DEMO_OUT)/acts --out $(DEMO_OUT)/report --overwrite --threads 2

# The paper's representation findings with verdicts (analyses.reproduce, cpu preset: ResNet-32,
# K = 16, five methods × 6 seeds on Fashion-MNIST, bf16 where the CPU has it, at most 90
# minutes on 2 cores). Finished runs
# are reused (--resume); the document and its figures are published to docs/.
REPRODUCE_OUT ?= reproduce-out

reproduce: setup
	$(PY) -m analyses.reproduce --preset cpu --out $(REPRODUCE_OUT) --threads 2 --resume \
	  --publish docs

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
