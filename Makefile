# make demo: set up .venv and run the main job end to end on the embedded default
# make test: set up .venv and run the tests (what CI runs)
# make test-fast: the tests that start no Dask process, train no Keras model and open no browser
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint browser

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/batchml demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The dashboard tests drive Debian's Chromium (Playwright's own browser download is not used).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium missing and not root: the dashboard tests will be skipped (apt-get install chromium)"

test: lint browser
	$(PY) -m pytest -q -p no:cacheprovider

# The edit-run loop: the tests not marked slow (tests/conftest.py refuses an unmarked test that reaches
# the cluster, trained-model or browser fixtures). CI runs everything: make test.
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"
