# Everything runs in .venv inside the repository.  PyTorch is installed first and
# pinned, so the resolver does not pull a newer multi-GB CUDA build on CPU machines
# (override on a GPU machine: make install TORCH=torch==2.13.0+cu126 or similar).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo

.PHONY: install test demo bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test,lint,egemaps,parquet,ray]"
	touch $@

test: install
	$(BIN)/pytest -q

# Extract -> train -> predict -> evaluate -> plot on a few made clips (a real
# photographic face and an audio track).  The encoder uses random weights so the demo
# runs offline; pass --encoder-weights PATH or leave the default (ImageNet, downloaded
# once) for real features.
demo: install
	$(BIN)/python scripts/make_demo_media.py $(DEMO)
	cd $(DEMO) && ../$(BIN)/vidaffect extract videos --encoder-weights random --workers 2
	cd $(DEMO) && ../$(BIN)/vidaffect info features
	cd $(DEMO) && ../$(BIN)/vidaffect train --net full --loss noninertial --epochs 8 --seq-len 25 --batch-size 8 --lr 0.05 --val-split 0.25 --seed 0 --out runs/demo
	cd $(DEMO) && ../$(BIN)/vidaffect predict videos --model runs/demo/best.ckpt --out results.csv --encoder-weights random
	cd $(DEMO) && ../$(BIN)/vidaffect evaluate results.csv --annotations annotations --json metrics.json
	cd $(DEMO) && ../$(BIN)/vidaffect plot results.csv --annotations annotations --out plots
	@echo "demo done: per-frame predictions in $(DEMO)/results.csv, figures in $(DEMO)/plots/, metrics in $(DEMO)/metrics.json"

bench: install
	$(BIN)/vidaffect bench --json bench.json

lint: install
	$(BIN)/ruff check vidaffect tests scripts
	$(BIN)/mypy vidaffect

clean:
	rm -rf $(DEMO) build dist *.egg-info .pytest_cache
