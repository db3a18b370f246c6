# make setup : create .venv and install the package with its dev extra (and gpu where
#              nvidia-smi lists a GPU), from requirements.lock; every target but clean runs it
# make quick : the whole pipeline on the quick profile (3,000-image subset, 2 folds, at most
#              2 epochs, 100 real-world pictures a kind), as a temporary experiment: params.yaml
#              stays as written; JOBS stages at a time (default 2)
# make test  : the whole test suite (what CI runs), on TEST_WORKERS pytest processes
# make test-fast : the suite without the `slow` tests, on TEST_WORKERS pytest processes
# make run   : the whole pipeline with the full recipes (dvc repro, JOBS stages at a time)
# make lint  : ruff check src tests benchmarks
# make bench : benchmark figures (see benchmarks/)
# make ablation : tutorial 001's ablation grid as queued DVC experiments
# make reproduce : full recipes, then the table of results vs the tutorials'
# make retrain : the retrain loop (pull, repro, push, commit to a branch, report);
#                RETRAIN_ARGS='--profile quick --push' etc.
# make against REF=<commit> LOOP=<setup|quick|test|test-fast|run|cmd:...> [RUNS=n] : that
#              loop timed at REF and in the working tree, alternating (benchmarks/against.sh)
# make plots-template : write .dvc/plots/offline.html again (the `dvc plots show` page with
#              Vega inline) from the locked vl-convert-python, after upgrading it
# make clean : remove .venv
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# dvc.yaml's stage commands run `python -m mnist_mlops...`: the venv first on PATH makes
# that the venv's python (and `dvc` the venv's dvc).
export PATH := $(BIN):$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2
# The one place that knows where a local copy of the MNIST files may be: beside the
# checkout in ../shared/data/mnist (CI, offline machines). Tests and benchmarks read
# $MNIST_MIRROR only; set it yourself to point elsewhere.
MNIST_MIRROR ?= $(firstword $(wildcard $(abspath $(CURDIR)/../shared/data/mnist)))
export MNIST_MIRROR
# An NVIDIA GPU that the driver lists: also install the `gpu` extra (TensorFlow's CUDA
# libraries), so that training uses it with no extra step. `make setup GPU=` skips it.
GPU ?= $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU' && echo 1)
# A literal comma inside $(if ...), whose arguments are separated by commas
COMMA := ,
EXTRAS := dev$(if $(GPU),$(COMMA)gpu)
# The quick profile as `dvc exp run` overrides, from its one definition in the package
# (jobs/profiles.py, also what `mnist-mlops retrain --profile quick` uses). `=`: asked only
# when a recipe needs it, once setup has installed the package; `make quick QUICK=...`
# overrides it.
QUICK = $(shell $(BIN)/mnist-mlops params --overrides quick)
# Stages at a time for `make run` and `make quick`: two keep two cores busy
JOBS ?= 2

.PHONY: setup run quick test test-fast lint bench ablation reproduce retrain against plots-template clean

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[$(EXTRAS)]'
	@echo "installed .[$(EXTRAS)]$(if $(GPU),: NVIDIA GPU found$(COMMA) TensorFlow with CUDA)"
	@[ -d .git ] || git init -q
	touch $@

setup: $(VENV)/.installed

# `dvc repro` with the stages that do not need each other running JOBS at a time
# (jobs/repro.py): the same models, bit for bit (each stage keeps its own threads).
run: setup
	mnist-mlops repro --jobs $(JOBS)

# A DVC experiment of the quick profile, as `dvc exp run --temp` would make it (in a copy
# under .dvc/tmp/exps/, saved with `dvc exp save`: `dvc exp show` lists it), with stages
# that do not need each other running JOBS at a time (jobs/experiment.py, jobs/repro.py),
# each stage's TensorFlow on its share of the cores (--share-cores: small stages gain by it).
quick: setup
	mnist-mlops exp-run --jobs $(JOBS) --share-cores $(QUICK)

# Test files run on TEST_WORKERS processes (pytest-xdist), each file on one worker (its
# module fixtures, servers and trainings made once), in the order tests/conftest.py gives
# (longest first: --no-loadscope-reorder); `pytest tests/test_x.py` runs serially.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The fast tier has no module-wide trainings or servers worth keeping together: its tests
# are dealt out one by one, except those tests/conftest.py's ONE_WORKER keeps together
# (--dist loadgroup): the tests that load TensorFlow on one worker, those that load
# Evidently on one, so that the other worker never imports them.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadgroup

plots-template: setup
	$(BIN)/python -m mnist_mlops.evaluation.plots_page .dvc/plots/offline.html

lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/run_all.py

reproduce: run
	$(BIN)/python benchmarks/reproduction.py --markdown reports/reproduction.md

retrain: setup
	$(BIN)/mnist-mlops retrain $(RETRAIN_ARGS)

ablation: setup
	bash benchmarks/ablation.sh

# Needs no setup of its own: it builds what each side needs
against:
	bash benchmarks/against.sh '$(REF)' '$(value LOOP)' $(RUNS)

clean:
	rm -rf $(VENV)
