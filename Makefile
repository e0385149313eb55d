# One-command set-up. `make demo` installs and runs the end-to-end demo; `make test`
# installs and runs the test suite. Both create .venv on first use.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install demo test lint bench clean

$(BIN)/toxjax: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, from the CPU wheel: any other torch request pulls a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,lm-eval]'
	touch $(BIN)/toxjax

install: $(BIN)/toxjax

demo: install
	$(BIN)/toxjax demo $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(ARGS)

lint: install
	$(BIN)/ruff check toxjax tasks tests benchmarks
	# The Python in README.md and docs/*.md is formatted by the same formatter.
	$(BIN)/ruff format --check toxjax tasks tests benchmarks README.md docs

clean:
	rm -rf $(VENV) *.egg-info
