# One entry for every routine task. `make setup` is idempotent and fast once done.
VENV ?= .venv
PY := $(VENV)/bin/python
export HPCTRAIN_VENV := $(abspath $(VENV))

.PHONY: setup test test-fast lint lint-python lint-shell demo lock clean
setup:
	./install.sh

# Everything CI runs: the linters, then every test but the MPICH install (test-install-mpich).
test: setup lint
	$(PY) -m pytest -m "not install_mpich" $(PYTEST_ARGS)

# The unprivileged install with PyPI's MPICH and its 2-rank training: a second Horovod build from nothing
# (about 5 min), beside the Open MPI one that make test runs.
.PHONY: test-install-mpich
test-install-mpich: setup
	$(PY) -m pytest -m install_mpich tests/test_install.py $(PYTEST_ARGS)

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
SHELL_SCRIPTS := install.sh $(wildcard install/*.sh) .ci/run $(wildcard containers/*.sh) \
  $(addprefix src/hpctrain/launch/templates/,common.sh site.env) $(wildcard src/hpctrain/launch/templates/*.sbatch)
lint-shell: setup
	$(VENV)/bin/shellcheck -x --shell=bash --source-path=SCRIPTDIR $(SHELL_SCRIPTS)

# The GPU install from scratch (CUDA wheels, Horovod built with NCCL: no GPU needed, nor a cached Horovod wheel),
# then its check. GPU_VENV is a link to GPU_VENV.<key> (install.sh); its wheel cache is GPU_VENV.wheels.
GPU_VENV ?= /tmp/hpctrain-gpu-venv
.PHONY: test-gpu-build
test-gpu-build:
	rm -rf $(GPU_VENV) $(GPU_VENV).*
	HPCTRAIN_WHEEL_CACHE=$(abspath $(GPU_VENV)).wheels ./install.sh --venv $(abspath $(GPU_VENV)) --gpu
	HPCTRAIN_GPU_VENV=$(abspath $(GPU_VENV)) $(GPU_VENV)/bin/python -m pytest --noconftest -s tests/gpu_build/check_gpu_build.py

# The images, built for real with Podman (no GPU needed for the GPU one), and the checks inside them
# (tests/containers/check_images.py). Root on Debian/Ubuntu: Podman, runc and mmdebstrap come from apt, and the base
# image is made from Debian's packages. CI runs the CPU image's part; test-containers both.
CONTAINER_TOOLS := podman runc mmdebstrap uidmap
export CONTAINERS_CONF ?= $(abspath tests/containers/containers.conf)
.PHONY: test-containers test-containers-cpu container-tools
container-tools:
	dpkg -s $(CONTAINER_TOOLS) >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(CONTAINER_TOOLS) >/dev/null; }
test-containers-cpu: setup container-tools
	containers/build.sh cpu --engine podman --base mmdebstrap
	$(PY) -m pytest -p no:cacheprovider tests/containers/check_images.py -k "not gpu" $(PYTEST_ARGS)
test-containers: test-containers-cpu
	containers/build.sh gpu --engine podman --base mmdebstrap
	$(PY) -m pytest -p no:cacheprovider tests/containers/check_images.py -k gpu $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/hpctrain demo

# Re-resolve the pinned environments from pyproject.toml's ranges: requirements.lock from a real Python 3.11
# install, requirements-py3.10.lock and -py3.12.lock resolved by uv for those Pythons (3.11's versions
# wherever they fit). Horovod is left out: install.sh builds it.
LOCK := /tmp/hpctrain-lock
lock:
	rm -rf $(LOCK) && python3.11 -m venv $(LOCK) && $(LOCK)/bin/pip install -q pip==25.3 uv
	$(LOCK)/bin/python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	  print("\n".join([d for d in p["dependencies"] + p["optional-dependencies"]["test"] if not d.startswith("horovod")] \
	  + ["pyyaml", "cloudpickle", "packaging", "pip", "setuptools", "wheel"]))' > $(LOCK)/requirements.in  # + Horovod's own
	$(LOCK)/bin/pip install -q -r $(LOCK)/requirements.in
	{ sed -n '1,2p' requirements.lock; $(LOCK)/bin/pip freeze --all | grep -v -i -E '^(horovod|hpctrain|uv)[=@ ]'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock
	grep -v -i -E '^(#|pip|setuptools)' requirements.lock > $(LOCK)/constraints.txt
	for v in 3.10 3.12; do rm -f $(LOCK)/$$v.txt; \
	  $(LOCK)/bin/uv pip compile -q --no-header --no-annotate --python-version $$v --python-platform x86_64-manylinux_2_28 \
	    -r $(LOCK)/requirements.in -c $(LOCK)/constraints.txt -o $(LOCK)/$$v.txt 2>/dev/null \
	  || $(LOCK)/bin/uv pip compile -q --no-header --no-annotate --python-version $$v \
	    --python-platform x86_64-manylinux_2_28 -r $(LOCK)/requirements.in -o $(LOCK)/$$v.txt; \
	  { sed -n '1,2p' requirements-py$$v.lock; cat $(LOCK)/$$v.txt; } > requirements-py$$v.lock.new && mv requirements-py$$v.lock.new requirements-py$$v.lock; done

clean:
	rm -rf $(VENV) $(VENV).* runs .pytest_cache
