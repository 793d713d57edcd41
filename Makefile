# zflash developer entry points. `make test` and `make demo` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test fuzz slow demo demo-line samples bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The fuzz suite with the long Hypothesis profile (tests/fuzz/fuzzing.py); `make test` runs it
# with the short one.
fuzz: $(STAMP)
	ZFLASH_FUZZ_PROFILE=long $(PY) -m pytest -q tests/fuzz

# The long runs deselected from `make test`: the whole fault matrix (tests/test_fault_matrix.py)
# and the hostile-device cases marked slow. A later -m overrides pyproject's "not slow".
slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests/test_fault_matrix.py tests/test_hostile_devices.py

demo: $(STAMP)
	$(PY) firmware-samples/demo.py

# A small line: devices plugged in one by one, flashed in parallel by `zflash station
# --watch`, one refused (another baseband), the summary, then it ends by itself.
demo-line: $(STAMP)
	$(PY) firmware-samples/demo_line.py

samples: $(STAMP)
	$(PY) firmware-samples/build.py

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
