# Two commands a user needs: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.13.0 is installed first and on its own, so pip takes the CPU build rather than a
# multi-GB CUDA build; pyproject.toml accepts that version and newer.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test install lint clean bench

$(BIN)/ablate: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(BIN)/ablate

install: $(BIN)/ablate

# A small ablation: 2 architectures x 2 tokenizers x 4 trials on synthetic GUE-shaped data,
# or on real GUE when ABLATE_GUE_DIR points to a GUE folder.
demo: install
	@start=$$(date +%s); \
	$(BIN)/ablate run search_spaces/studies/demo.yaml $(if $(ABLATE_GUE_DIR),--gue-dir "$(ABLATE_GUE_DIR)") && \
	$(BIN)/ablate report search_spaces/studies/demo.yaml --out reports/demo && \
	echo "demo finished in $$(( $$(date +%s) - start )) s"

test: install
	$(BIN)/python -m pytest -q

# Every benchmark in bench/, one after another (about 20 minutes at most): one table, and
# bench/results.json.
bench: install
	$(BIN)/python bench/run_all.py

lint: install
	$(BIN)/ruff check ablate tests

clean:
	rm -rf .ablate reports mlruns.db mlruns mlartifacts
