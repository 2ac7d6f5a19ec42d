# The two front-door commands: `make demo` (set up, then run the main job) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup demo test clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,postgres]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/hwnas search dmasking --space fbnet_v2 --dataset digits --width 0.25 --device local-cpu --profile \
		--alpha 0.5 --epochs 10 --final-epochs 40 --out results/demo

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) results/demo
