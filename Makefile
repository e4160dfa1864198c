PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install test test-fast lint format bench gpu-check results demo-lv demo-ct demo-ns clean

install:  ## install hybridsim with its dev tools, sweepers/launchers and trackers (editable)
	$(PIP) install -e ".[dev,sweep,tracking]"

test:  ## the test suite (CPU, a few minutes on 2 cores)
	$(PYTHON) -m pytest -q

test-fast:  ## skip the tests marked slow
	$(PYTHON) -m pytest -q -m "not slow"

lint:
	$(PYTHON) -m ruff check hybridsim tests benchmarks docs/results
	$(PYTHON) -m ruff format --check hybridsim tests benchmarks docs/results

format:
	$(PYTHON) -m ruff format hybridsim tests benchmarks
	$(PYTHON) -m ruff check --fix hybridsim tests benchmarks

bench:  ## benchmarks against measured peers -> benchmarks/results/*.json, compared with the last committed file (needs: pip install -e ".[bench]"; BENCH_ARGS="--quick", "--strict", "--only radon")
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PYTHON) benchmarks/run_all.py $(BENCH_ARGS)

gpu-check:  ## the prepared CUDA check (gpu tests, paper-scale steps) into $(GPU_OUT); fails clearly without CUDA
	bash benchmarks/gpu_check.sh $(GPU_OUT)

results:  ## the sweeps behind every README figure, their reports, the README's result blocks
	$(PYTHON) docs/results/make_results.py $(RESULTS_ARGS)

demo-lv:  ## the Lotka-Volterra UDE on its defaults (~4 CPU-minutes)
	hybridsim train problem=lv

demo-ct:  ## learned gradient descent for CT on its CPU-sized defaults
	hybridsim train problem=ct

demo-ns:  ## solver-in-the-loop on the 2D wake, CPU-sized defaults
	hybridsim train problem=ns

clean:
	rm -rf outputs/* multirun .pytest_cache
