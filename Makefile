# make setup: .venv with the toolkit and its test dependencies (+ Fashion-MNIST when root)
# make test:  setup, then the test suite
# make demo:  setup, then the main job on the embedded Fashion-MNIST
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
DEMO_OUT ?= demo-out

.PHONY: setup test demo dataset clean

setup: $(STAMP) dataset

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

dataset:
	@if [ ! -f $(FASHION_MNIST) ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  else \
	    echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'" \
	         "or pass --data-root to a folder with its idx files"; \
	  fi; \
	fi

test: setup
	$(PY) -m pytest -q

demo: setup
	mkdir -p $(DEMO_OUT)
	$(PY) -m training.train --method bp --arch resnet20 --width 8 --subset 10000 \
	  --epochs 3 --batch-size 128 --lr 0.1 --seed 0 --threads 2 \
	  --out $(DEMO_OUT)/bp.pt --resume

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
