# Two commands: `make run` and `make test`. Each sets itself up on a fresh machine.
PYTHON ?= python3.11
VENV   ?= .venv
DATA   ?= ../shared/mvsa
OUT    ?= runs/default
BIN     = $(VENV)/bin

.PHONY: run test bench clean

# `make run` without the data set stops at once with one line saying where it goes.
ifneq ($(filter run bench,$(MAKECMDGOALS)),)
ifeq ($(wildcard $(DATA)/train.txt),)
$(error No data set at $(DATA): put MVSA there (data/{guid}.txt, data/{guid}.jpg, train.txt, test_without_label.txt), or run make run DATA=/path/to/mvsa)
endif
endif

$(BIN)/mmsent: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch comes from this machine's local wheels; it is installed in the same pip call as its dependants
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

run: $(BIN)/mmsent
	$(BIN)/mmsent run --data $(DATA) --out $(OUT) --overwrite

test: $(BIN)/mmsent
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

bench: $(BIN)/mmsent
	$(BIN)/python benchmarks/bench_run.py --data $(DATA)

clean:
	rm -rf $(VENV) runs .pytest_cache
