# Quick start: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sepbn-installed
# Keep helper processes (data workers, DDP tests) from spinning on the 2 cores.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: test demo lint bench clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# The local torch build; pip takes it from this machine's disk.
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	# mtcnn and dlib: face detectors whose wheels carry their models (mediapipe needs
	# numpy<2 and a second cv2, so it stays out of this environment).
	$(BIN)/pip install -e '.[dev,bench,tensorboard,mtcnn,dlib,analysis]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/sepbn demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy src

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_layers.py
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_models.py

clean-venv:
	rm -rf $(VENV)
