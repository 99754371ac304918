# jielong — `make demo` and `make test` work on a fresh machine: they create .venv first.
PY     ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# A CPU machine gets this torch; on a GPU machine pass e.g. TORCH=torch to keep pip's choice.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test install lint bench clean chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[all,dev]"
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/jielong demo

# One pytest worker a core (pytest-xdist); tests/conftest.py gives each its share of threads.
test: $(STAMP) chromium
	$(BIN)/python -m pytest -n auto

# The web UI's tests drive Debian's Chromium through Playwright; install it when missing
# (apt needs root). Without it those tests are skipped, with the reason in pytest's summary.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests (apt-get)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  { $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q \
	      chromium fonts-wqy-microhei fonts-noto-color-emoji; } \
	    >/dev/null 2>&1 || echo "could not install chromium: the browser tests will be skipped"; }

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

bench: $(STAMP)
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_generate.py
	$(BIN)/python bench/bench_load.py
	$(BIN)/python bench/bench_dpo.py
	$(BIN)/python bench/bench_finetune.py
	$(BIN)/python bench/bench_rlhf.py
	$(BIN)/python bench/bench_serve.py

clean:
	rm -rf $(VENV) runs .pytest_cache
