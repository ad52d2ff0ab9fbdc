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

# The three questions on one task (2 architectures x 2 pretrainings x 2 tokenizers, replicates)
# on synthetic GUE-shaped data with planted effects,
# or on real GUE when ABLATE_GUE_DIR points to a GUE folder. Ends with where the report is and
# how to open the runs in the MLflow UI.
demo: install
	@start=$$(date +%s); \
	$(BIN)/ablate run search_spaces/studies/demo.yaml $(if $(ABLATE_GUE_DIR),--gue-dir "$(ABLATE_GUE_DIR)") && \
	$(BIN)/ablate report search_spaces/studies/demo.yaml --out reports/demo && \
	echo "demo finished in $$(( $$(date +%s) - start )) s" && \
	echo "report:    $(CURDIR)/reports/demo/report.md" && \
	echo "open:      file://$(CURDIR)/reports/demo/report.html" && \
	echo "MLflow UI: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns.db" && \
	echo "  then its runs: http://127.0.0.1:5000/#/experiments/$$($(BIN)/python -c 'from mlflow import MlflowClient; print(MlflowClient("sqlite:///mlruns.db").get_experiment_by_name("demo").experiment_id)')/runs"

test: install
	$(BIN)/python -m pytest -q

# Every benchmark in bench/, one after another (about 30 minutes at most): one table, and
# bench/results.json.
bench: install
	$(BIN)/python bench/run_all.py

lint: install
	$(BIN)/ruff check ablate tests

clean:
	rm -rf .ablate reports mlruns.db mlruns.optuna.db mlruns mlartifacts
