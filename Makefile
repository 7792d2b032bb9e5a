# The two commands in the README: `make demo` and `make test`. Both set themselves up:
# system tools (ffmpeg, espeak-ng), a virtualenv, torch (TORCH_SPEC), the project.
#
#   TORCH_SPEC   what pip installs for torch first. The default is the CPU build this kind of
#                machine carries; a GPU server sets e.g. TORCH_SPEC="torch==2.5.1" with
#                PIP_EXTRA_INDEX_URL for its CUDA build, and EXTRAS=dev,cuda.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,cpu
PYTEST_ARGS ?= -q
DEMO_TEXT ?= ¡Jo, jo, jo! Hola Lucía. Este año te has portado muy bien. ¡Feliz Navidad!
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell echo '$(TORCH_SPEC) $(EXTRAS)' | md5sum | cut -c1-8)

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/bootstrap_system.sh
	@bash scripts/bootstrap_system.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[$(EXTRAS)]"
	@rm -f $(VENV)/.installed-* && touch $@

demo: setup
	@mkdir -p out
	$(BIN)/lipsync-node render --persona papa_noel --text "$(DEMO_TEXT)" -o out/demo.mp4
	@echo "demo: wrote out/demo.mp4"

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/encoder_fps.py
	$(BIN)/python bench/wav2lip_node.py
	$(BIN)/python bench/generator_backends.py
	$(BIN)/python bench/cold_avatar.py
	$(BIN)/python bench/musetalk_node.py
	$(BIN)/python bench/sync_overhead.py
	$(BIN)/python bench/queue_throughput.py
	$(BIN)/python bench/audio_cache.py
	$(BIN)/python bench/render_slots.py
	$(BIN)/python bench/avatar_fleet.py

clean:
	rm -rf $(VENV) out .pytest_cache
