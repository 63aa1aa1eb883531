# Every target installs what it needs into .venv first, so each works on a fresh clone.
PY      := .venv/bin/python
STAMP   := .venv/.installed
EXP     ?= fig6
RUNS    ?=
export PYTHONHASHSEED := 0

.PHONY: install demo test lint bench report sweep paper-figures clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The whole pipeline in miniature: sweep 4 methods x 2 seeds on the quickstart, then the table and bubble plot.
demo: $(STAMP)
	$(PY) scripts/sweep.py demo
	$(PY) scripts/report.py --experiment demo --out results/demo

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	.venv/bin/ruff check src tests scripts run.py
	.venv/bin/ruff format --check src tests scripts run.py

bench: $(STAMP)
	$(PY) scripts/bench.py

# EXP names a manifest in experiments/ (fig6, table2, ...; aliases like fig6_cifar10 work too).
# make sweep EXP=fig6 ARGS="hydra/launcher=slurm hydra.launcher.partition=gpu"
sweep: $(STAMP)
	$(PY) scripts/sweep.py $(EXP) $(ARGS)

# Scans the manifest's run dirs (or RUNS="dir1 dir2") and writes results/<manifest name>/; EXP may be a path.
report: $(STAMP)
	$(PY) scripts/report.py $(RUNS) --experiment $(EXP) --out results/$(basename $(notdir $(EXP)))

paper-figures: $(STAMP)
	$(PY) scripts/paper_figures.py

clean:
	rm -rf logs outputs multirun .pytest_cache
