# make test  -- create .venv with the pinned versions and run the test suite
# make demo  -- create .venv and run the main job (see README)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

DATA    ?=
WEIGHTS ?= imagenet
CACHE   ?= cache/feats.h5

.PHONY: venv test demo bench clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test,ray]'
	touch $(STAMP)

# Real photos for the tests; CI sets TLKIT_HYMENOPTERA itself (see .ci/run).
export TLKIT_HYMENOPTERA ?= $(abspath ../shared/datasets/hymenoptera_data)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	@test -n "$(DATA)" || { echo "error: set DATA=path/to/images (ROOT/<split>/<class>/<image>)"; exit 2; }
	$(BIN)/tlkit embed "$(DATA)" $(CACHE) --weights $(WEIGHTS)

clean:
	rm -rf $(VENV) build *.egg-info
