# One-command set-up. `make demo` installs and runs the end-to-end demo; `make test`
# installs and runs the test suite. Both create .venv on first use.
#
# toxjax supports Python 3.11-3.13 (pyproject.toml). PY is the newest of them that runs
# here (a pyenv shim of a version that is not active does not count); `make PY=python3.11
# ...` picks another. `make test-pythons` runs the suite on each one found.
SUPPORTED_PYTHONS := python3.13 python3.12 python3.11
PY ?= $(firstword $(foreach p,$(SUPPORTED_PYTHONS),$(shell $(p) -c '' >/dev/null 2>&1 && echo $(p))))
VENV ?= .venv
BIN := $(VENV)/bin
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install demo test test-slow test-pythons which-python lint bench clean

$(BIN)/toxjax: pyproject.toml
	@test -n "$(PY)" || { echo "make: no python3.11, 3.12 or 3.13 runs here; install one (toxjax supports 3.11-3.13) or pass PY=/path/to/python" >&2; exit 2; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, from the CPU wheel: any other torch request pulls a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,lm-eval]'
	touch $(BIN)/toxjax

install: $(BIN)/toxjax

demo: install
	$(BIN)/toxjax demo $(ARGS)

# The default suite leaves out the tests marked slow (whole demos, benchmarks, kill -9
# resumes, exports): `make test-slow` runs those, `make test MARK=` everything.
MARK ?= not slow
test: install
	$(BIN)/python -m pytest -q $(if $(MARK),-m "$(MARK)") $(ARGS)

test-slow:
	$(MAKE) --no-print-directory test MARK=slow

# The suite once per supported Python that runs here, each in its own .venv-3.x.
test-pythons:
	@found=0; for py in $(SUPPORTED_PYTHONS); do \
	  if $$py -c '' >/dev/null 2>&1; then found=1; \
	    $(MAKE) --no-print-directory test PY=$$py VENV=.venv-$${py#python} || exit 1; \
	  else echo "test-pythons: $$py does not run here, skipped"; fi; \
	done; test $$found = 1

which-python:
	@echo $(PY)

lint: install
	$(BIN)/ruff check toxjax tasks tests benchmarks
	# The Python in README.md and docs/*.md is formatted by the same formatter.
	$(BIN)/ruff format --check toxjax tasks tests benchmarks README.md docs

clean:
	rm -rf $(VENV) .venv-3.1? *.egg-info
