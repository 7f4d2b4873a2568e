# One entry for every routine task. `make setup` is idempotent and fast once done.
VENV ?= .venv
PY := $(VENV)/bin/python
export HPCTRAIN_VENV := $(abspath $(VENV))

.PHONY: setup test demo lock clean
setup:
	./install.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

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
