# editbatch: `make demo` and `make test` work on a fresh machine (they create .venv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch where no NVIDIA GPU is present; pip's default build otherwise.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.editbatch-installed

.PHONY: install demo test bench bench-scale compose-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(BIN)/python -m pip install -q "$(TORCH_SPEC)"; \
	else \
	  $(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(TORCH_CPU_PIP_ARGS); \
	fi
	$(BIN)/python -m pip install -q -e ".[test,monitor,lora,scores]"
	@if $(BIN)/python -m pip show torchvision >/dev/null 2>&1; then \
	  echo "torchvision is installed in $(VENV): it breaks transformers with a CPU torch; remove it"; exit 1; fi
	touch $(STAMP)

demo: install
	$(BIN)/editbatch run configs/demo.yaml --overwrite

test: install
	$(BIN)/ruff check src tests bench
	# Two processes, one test file each at a time: most tests wait on real edits, barriers and faults, so two
	# files side by side take about 0.65 of the serial time on 2 cores. A single file: pytest tests/test_x.py.
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: install
	$(BIN)/python bench/schedule.py

bench-scale: install
	$(BIN)/python bench/scale.py

compose-check:
	REDIS_PASSWORD=check FLOWER_PASSWORD=check docker compose -f docker-compose.yml --profile run config -q

clean:
	rm -rf runs .pytest_cache
