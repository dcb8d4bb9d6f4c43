# lossbench: `make repro` runs the pipeline, `make test` runs the tests.
# Both create .venv and install the pinned requirements first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help repro overview test test-rest test-all bench compare remote push pull docker docker-repro docker-test gpu-pack gpu-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

repro: $(STAMP)  ## run this machine's pipeline (results/<machine>/): check, train matrix, cost, report; then the overview
	$(BIN)/python -m lossbench.config params.yaml  # one line per bad key, before DVC reads the file
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m lossbench.workflow repro

overview: $(STAMP)  ## the overview over every machine's committed report (trains nothing)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m lossbench.workflow overview

test: $(STAMP)  ## the fast tier (~1 min): every unit, the check, evidence, report, compare, one small make repro
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-rest: $(STAMP)  ## the slow tier alone (~7 min): the full pipeline on real MNIST, many machines, the golden
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-all: $(STAMP)  ## both tiers: every test
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

# the inner loop of this commit too, side by side: the last one before candidates were timed in their own stage
BEFORE ?= 651bfcf

bench: $(STAMP)  ## data paths, the cost table, a cold dvc repro -f vs its loops, the inner loop before and after
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro download
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m lossbench.bench --params params.yaml --data data --repro \
		--inner --before $(BEFORE)

clean:  ## remove the virtual environment
	rm -rf $(VENV)

remote: $(STAMP)  ## many machines: make remote URL=<dir | s3://... | ssh://...> sets the default DVC remote
	@test -n "$(URL)" || { echo "usage: make remote URL=<dir | s3://bucket/path | ssh://host/path>" >&2; exit 2; }
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m lossbench.workflow remote $(URL)

push: $(STAMP)  ## many machines: this machine's outputs to the DVC remote, its results/<machine>/ to Git
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m lossbench.workflow push

pull: $(STAMP)  ## many machines: Git (every machine's lock and report), then their outputs
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m lossbench.workflow pull

compare: $(STAMP)  ## compare reports: make compare A=<rev> [B=<rev>] [M=<machine>] (B: the workspace; M: this machine)
	@test -n "$(A)" || { echo "usage: make compare A=<rev> [B=<rev>] [M=<machine>]" >&2; exit 2; }
	$(BIN)/python -m lossbench.compare $(A) $(B) $(if $(M),--machine $(M))

IMAGE ?= lossbench

docker:  ## build the CUDA image (needs a Docker engine)
	docker build -t $(IMAGE) .

docker-repro:  ## run the pipeline in the image on all GPUs, results land here
	docker run --rm --gpus all --user "$$(id -u):$$(id -g)" -e LOSSBENCH_REQUIRE_DEVICES -e LOSSBENCH_MACHINE \
		-v "$(CURDIR)":/workspace $(IMAGE)

docker-test:  ## build the image (docker, else podman) and run it on a fresh clone: the container's checks
	IMAGE=$(IMAGE) docker/test.sh

gpu-pack:  ## fill .gpu/ for a lent GPU machine: MNIST + the wheels its python lacks (docs/gpu-run.md)
	bash gpu/pack.sh 3.12

gpu-check:  ## the GPU run's command in its CPU form, in a clean venv with only what a GPU host provides
	bash gpu/check-cpu.sh
