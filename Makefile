# Two commands do all the set-up on a fresh machine:
#   make demo   a small model trained live on a dashboard (`monitor demo`: starts a local server if none runs)
#   make test   the test suite, against a real Visdom server and a headless browser
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PIP     = $(BIN)/python -m pip install --quiet --constraint constraints.txt

.PHONY: demo test bench install assets browser gpu-carry clean

demo: install assets
	$(BIN)/monitor demo

test: install assets browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The benchmarks, and the alternatives they compare against (TensorBoard, pytorch-ignite).
bench: install assets
	$(PIP) --no-build-isolation -e ".[bench]"
	$(BIN)/python bench/run_all.py

install: $(VENV)/.installed

# visdom 0.2.4 ships an sdist whose setup.py needs pkg_resources: build it with the venv's own
# setuptools (<81, from constraints.txt) instead of pip's isolated, newest one.
$(VENV)/.installed: setup.py setup.cfg constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) "setuptools<81" wheel
	$(PIP) --no-build-isolation -e ".[test]"
	touch $@

# The dashboard's scripts and fonts, fetched once (visdom's own download when online, else npm;
# npm itself from Debian's packages when it is missing).
assets: install
	@$(BIN)/monitor assets || { command -v npm >/dev/null && exit 1; \
	  echo "npm is missing: installing Debian's npm for the dashboard assets"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq npm && $(BIN)/monitor assets; }

# Debian's chromium and its driver for the browser tests, installed when missing.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver; }

# For .ci/gpu on a lent GPU machine, whose python3 has torch but not visdom: visdom with its assets
# and the packages it lacks there (pure Python, tornado's abi3 speedups), copied into .gpu/site.
gpu-carry: install assets
	rm -rf .gpu/site && mkdir -p .gpu/site
	cd "$$($(BIN)/python -c 'import pathlib, visdom; print(pathlib.Path(visdom.__file__).parents[1])')" && \
	  cp -r visdom tornado websocket jsonpatch.py jsonpointer.py "$(CURDIR)/.gpu/site/"

clean:
	rm -rf $(VENV) *.egg-info
