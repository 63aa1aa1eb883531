# Every target installs what it needs into .venv first, so each works on a fresh clone.
PY      := .venv/bin/python
STAMP   := .venv/.installed
EXP     ?= fig6
RUNS    ?=
export PYTHONHASHSEED := 0

.PHONY: install source-model demo mini real readme-tables test lint bench costs report sweep paper-figures clean

$(STAMP): pyproject.toml requirements-real.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements-real.txt
	touch $(STAMP)

install: $(STAMP)

# The quickstart's source model, re-made by its pinned recipe into .cache/vit_digits_0-4 and compared with the
# committed one (src/onelora/assets/vit_digits_0-4); UPDATE=1 makes it the committed one (then commit it).
source-model: $(STAMP)
	$(PY) scripts/source_model.py $(if $(UPDATE),--update-reference)

# The whole pipeline in miniature: sweep 4 methods x 2 seeds on the quickstart, then the table and bubble plot.
# One thread per process: the numbers do not depend on the machine's core count (and two sweeps share 2 cores).
# Writes results/local/demo/ (git-ignored) and shows it beside the committed results/demo/; UPDATE=1 makes it the
# committed reference instead (then python scripts/readme_tables.py puts its table in the README).
demo: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) scripts/sweep.py demo --progress
	$(PY) scripts/report.py --experiment demo $(if $(UPDATE),--out results/demo,--out results/local/demo --reference results/demo)

# Table S9 at laptop scale: every method x 4 seeds on the digits transfer, one lr for all and an lr chosen per
# method on a holdout split (experiments/mini.yaml): 132 runs, 14 min of CPU in all (about 8 min on 2 idle cores).
# Like demo: results/local/mini/ beside the committed results/mini/ (UPDATE=1: the committed reference).
mini: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) scripts/sweep.py mini --progress --jobs 2
	$(PY) scripts/report.py --experiment mini $(if $(UPDATE),--out results/mini,--out results/local/mini --reference results/mini)

# Table S9 on real pretrained weights (README "Real weights"): every method x 4 seeds, both protocols, on MiniLM
# (movie-sentence sentiment) and SmolLM2-135M (the same sentences as instructions, the math task's machinery).
# Like demo: results/local/real_*/ beside the committed results/real/*/ (UPDATE=1: the committed reference).
real: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) scripts/sweep.py real_minilm --progress --jobs 2
	$(PY) scripts/report.py --experiment real_minilm $(if $(UPDATE),--out results/real/minilm,--out results/local/real_minilm --reference results/real/minilm)
	OMP_NUM_THREADS=1 $(PY) scripts/sweep.py real_smollm2 --progress --jobs 2
	$(PY) scripts/report.py --experiment real_smollm2 $(if $(UPDATE),--out results/real/smollm2,--out results/local/real_smollm2 --reference results/real/smollm2)

# The README's results tables, from the committed results files (tests/test_readme.py checks them).
readme-tables: $(STAMP)
	$(PY) scripts/readme_tables.py

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	.venv/bin/ruff check src tests scripts run.py
	.venv/bin/ruff format --check src tests scripts run.py

# The cost of every method against BitFit: the two stacks, the 4-bit Llama and the width sweep at the paper's block
# shapes (results/bench/). On a GPU: make bench DEVICE=cuda DTYPE=bfloat16 (CUDA-event timing, peak memory).
DEVICE  ?= cpu
DTYPE   ?= float32
bench: $(STAMP)
	$(PY) scripts/bench.py --device $(DEVICE) --dtype $(DTYPE)

# The paper's time and memory columns of a table, measured on random weights at full size (a GPU; see README
# "Costs"): make costs EXP=fig4 [ARGS="--steps 20 --methods onelora,lora"]. Writes results/costs/$(EXP).{csv,md,png}.
costs: $(STAMP)
	$(PY) scripts/costs.py $(EXP) $(ARGS)

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
