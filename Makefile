# Two commands: `make run` and `make test`. Each sets itself up on a fresh machine.
PYTHON ?= python3.11
VENV   ?= .venv
DATA   ?= ../shared/mvsa
OUT    ?= runs/default
BIN     = $(VENV)/bin

.PHONY: run test bench clean

$(BIN)/mmsent: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch comes from this machine's local wheels; it is installed in the same pip call as its dependants
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

run: $(BIN)/mmsent
	@if [ ! -f "$(DATA)/train.txt" ] || [ ! -d "$(DATA)/data" ]; then \
	  echo "No data set at $(DATA): put MVSA there (data/{guid}.txt, data/{guid}.jpg, train.txt, test_without_label.txt) or run make run DATA=/path/to/mvsa"; \
	  exit 2; fi
	$(BIN)/mmsent run --data $(DATA) --out $(OUT)

test: $(BIN)/mmsent
	$(BIN)/python -m pytest -q

bench: $(BIN)/mmsent
	$(BIN)/python benchmarks/bench_run.py --data $(DATA)

clean:
	rm -rf $(VENV) runs .pytest_cache
