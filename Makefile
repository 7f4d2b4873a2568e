# One entry for every routine task. `make setup` is idempotent and fast once done.
VENV ?= .venv
PY := $(VENV)/bin/python
export HPCTRAIN_VENV := $(abspath $(VENV))

.PHONY: setup test test-fast lint lint-python lint-shell demo lock clean
setup:
	./install.sh

# Everything CI runs: the linters, then every test.
test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS)

# Unit tests only (no subprocess, no training): seconds, for every edit.
test-fast: setup
	$(PY) -m pytest -m fast -q $(PYTEST_ARGS)

lint: lint-python lint-shell

# ruff's rule set and the import layers are in pyproject.toml.
lint-python: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports

# shellcheck (pinned in the venv) on every shell file of the project; -x follows `source`, looked up next to
# each script (templates: common.sh, site.env).
SHELL_SCRIPTS := install.sh .ci/run $(wildcard containers/*.sh) \
  $(addprefix src/hpctrain/launch/templates/,common.sh site.env) $(wildcard src/hpctrain/launch/templates/*.sbatch)
lint-shell: setup
	$(VENV)/bin/shellcheck -x --shell=bash --source-path=SCRIPTDIR $(SHELL_SCRIPTS)

demo: setup
	$(VENV)/bin/hpctrain demo

# Re-resolve the pinned environment from pyproject.toml into requirements.lock.
lock:
	rm -rf /tmp/hpctrain-lock && python3.11 -m venv /tmp/hpctrain-lock
	/tmp/hpctrain-lock/bin/pip install -q pip==25.3 && /tmp/hpctrain-lock/bin/pip install -q $$(python3.11 -c \
	  'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(" ".join(d for d in p["dependencies"] + p["optional-dependencies"]["test"] if not d.startswith("horovod")))') psutil pyyaml  # + Horovod's own requirements
	{ sed -n '1,2p' requirements.lock; /tmp/hpctrain-lock/bin/pip freeze --all | grep -v -i -E '^(horovod|hpctrain)[=@ ]'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) runs .pytest_cache
