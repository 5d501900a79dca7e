# make test  -- create .venv with the pinned versions and run the test suite
# make demo  -- create .venv and run the main job (see README)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

DATA    ?=
WEIGHTS ?= imagenet
CACHE   ?= cache/feats.h5

.PHONY: venv test demo clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[test,ray,track,shards,export,timm]'
	touch $(STAMP)

# Real photos for the tests: $TLKIT_HYMENOPTERA (CI sets it, see .ci/run), else ../shared beside the checkout,
# else data/hymenoptera_data, downloaded once; offline, the tests that need them are skipped (one line says
# which, and how to provide them). scripts/test_data.py decides.
# TEST_WORKERS: pytest-xdist processes (default: one per CPU). Whole files go to one worker (--dist loadfile),
# so a module's shared fixtures (its caches, its runs) are still built once. TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= logical
test: $(STAMP)
	@TLKIT_HYMENOPTERA="$$($(BIN)/python scripts/test_data.py)" $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# make demo       the main job on a fresh machine: without DATA=, download the hymenoptera photos
#                 (PyTorch tutorial URL) into data/, embed them, fit the linear, logreg, quantum,
#                 bottleneck, svc and mlp heads, each tuned with the same budget (a 3-value grid, $(CV)-fold
#                 cross-validation on the train split; logreg chooses its C by its own inner search) and
#                 refitted for $(SEEDS) seeds, write the report to $(RUNS)/report/: intervals, every head
#                 against linear, and quantum against its classical control, bottleneck.
# make reproduce  the seed paper's whole table: demo plus the 30-epoch ResNet-18-from-scratch baseline,
#                 reported as the baseline of the relative changes and of the paired comparisons.
# DATA=, WEIGHTS= (imagenet, random or a state_dict file), CACHE= and RUNS= override the defaults;
# SEEDS= is fit-head's --seeds (a count, a range 0-9 or a list 1,5,9; default 5); CV= its --cv (default 3 here);
# DEMO_LRS= (torch heads), DEMO_CS= (svc's C) and DEMO_ALPHAS= (mlp's alpha) are the grids; HEAD_FLAGS= passes
# options to fit-head (e.g. --epochs 5), SCRATCH_FLAGS= to train-scratch; TLKIT= is the command that runs
# them all (default: the venv's tlkit; e.g. TLKIT="uv run tlkit"). Finished runs are kept, so
# an interrupted make picks up where it stopped (an unfinished scratch run is resumed).
RUNS          ?= runs/demo-$(notdir $(basename $(WEIGHTS)))
TLKIT         ?= $(BIN)/tlkit
SEEDS         ?= 5
HEAD_FLAGS    ?=
SCRATCH_FLAGS ?=
DEMO_DATA      = $(if $(DATA),$(DATA),data/hymenoptera_data)
CV            ?= 3
DEMO_LRS      ?= 0.001,0.01,0.1
DEMO_CS       ?= 0.1,1,10
DEMO_ALPHAS   ?= 0.0001,0.01,1
DEMO_HEADS     = linear logreg quantum bottleneck svc mlp
# The comparison that says whether the circuit itself adds anything (beside every head vs the baseline).
DEMO_COMPARE   = --compare "$(RUNS)/quantum:$(RUNS)/bottleneck"

demo: $(STAMP)
	@test -n "$(DATA)" || $(BIN)/python scripts/fetch_hymenoptera.py data
	$(TLKIT) embed "$(DEMO_DATA)" "$(CACHE)" --weights $(WEIGHTS)
	@for head in $(DEMO_HEADS); do \
	  case $$head in linear|quantum|bottleneck) grid="--grid lr=$(DEMO_LRS)";; svc) grid="--grid C=$(DEMO_CS)";; \
	    mlp) grid="--grid alpha=$(DEMO_ALPHAS)";; *) grid=;; esac; \
	  if [ -f "$(RUNS)/$$head/metrics.json" ]; then echo "$(RUNS)/$$head is finished: kept"; \
	  else echo "$(TLKIT) fit-head --head $$head --cache $(CACHE) --out $(RUNS)/$$head --seeds $(SEEDS) --cv $(CV) $$grid $(HEAD_FLAGS)"; \
	    $(TLKIT) fit-head --head $$head --cache "$(CACHE)" --out "$(RUNS)/$$head" --seeds "$(SEEDS)" --cv "$(CV)" $$grid \
	      $(HEAD_FLAGS) || exit 1; fi; \
	done
	$(TLKIT) report $(foreach h,$(DEMO_HEADS),"$(RUNS)/$(h)") -o "$(RUNS)/report" $(DEMO_COMPARE)

.PHONY: reproduce
reproduce: demo
	@if [ -f "$(RUNS)/scratch/metrics.json" ]; then echo "$(RUNS)/scratch is finished: kept"; \
	else resume=; [ -f "$(RUNS)/scratch/config.json" ] && resume=--resume; \
	  echo "$(TLKIT) train-scratch $(DEMO_DATA) --out $(RUNS)/scratch $(SCRATCH_FLAGS) $$resume"; \
	  $(TLKIT) train-scratch "$(DEMO_DATA)" --out "$(RUNS)/scratch" $(SCRATCH_FLAGS) $$resume || exit 1; fi
	$(TLKIT) report "$(RUNS)/scratch" $(foreach h,$(DEMO_HEADS),"$(RUNS)/$(h)") -o "$(RUNS)/report" \
	  --baseline "$(RUNS)/scratch" $(DEMO_COMPARE)

clean:
	rm -rf $(VENV) build *.egg-info
