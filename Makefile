# Two commands from a fresh Debian/Ubuntu machine with Python 3.10+:
#   make demo   install, train on Fashion-MNIST with the recipe for this CPU within a 0.04 h = 144 s budget,
#               predict on a few test images
#   make test   install, run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The exact PyTorch build the project is tested with; pyproject.toml declares the supported range.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
FMNIST := /usr/share/datasets/fashion-mnist
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install data tools browser demo test test-slow serve lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Fashion-MNIST's original files from Debian's package; elsewhere pigeon downloads and verifies them.
data:
	@if [ ! -d $(FMNIST) ] && command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; fi

# Debian's strace: tests/test_offline.py traces every verb with it to prove that none touches the network.
tools:
	@if ! command -v strace >/dev/null && command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq strace; fi

# Debian's chromium: tests/serve/test_browser.py drives it through Playwright (never `playwright install`,
# which downloads browsers).
browser:
	@if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; fi

demo: install data
	$(BIN)/pigeon train --data fashion-mnist --time 0.04 --project runs/train --name demo --exist-ok
	$(BIN)/python examples/fashion_samples.py --out runs/demo-samples --count 8
	$(BIN)/pigeon predict --model runs/train/demo/weights/best.safetensors --source runs/demo-samples --top-k 3

test: install data tools browser
	$(BIN)/python -m pytest -q

# The benchmark scripts' smoke runs (about 2 minutes), kept out of `make test` to hold it under 5 minutes.
test-slow: install data
	$(BIN)/python -m pytest -q -m slow

# The app and REST API at http://127.0.0.1:8000 (Ctrl-C stops it; runs and datasets are kept).
serve: install
	$(BIN)/pigeon serve

lint: install
	$(BIN)/ruff check pigeon tests benchmarks examples

clean:
	rm -rf $(VENV) runs .pytest_cache
