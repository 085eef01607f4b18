# Thin wrappers around the entry scripts; every variable can be overridden: make codes BACKBONE=vgg16
PYTHON   ?= python
CNN      ?= cnn-codes
DATA     ?= examples/caltech5
BACKBONE ?= efficientnet_lite0
LAYER    ?=
POOLING  ?= avg
WEIGHTS  ?= imagenet
IMAGE_SIZE ?=
SPLIT    ?=
LAYOUT   ?=
LABELS   ?=
HEAD     ?= softmax
CACHE    ?= cache
RUNS     ?= runs
HEADS    ?= softmax mlp logreg
NS       ?=
REPEATS  ?= 5
ARGS     ?=
CODES    ?=

LAYER_OPT = $(if $(LAYER),--layer $(LAYER))
SIZE_OPT  = $(if $(IMAGE_SIZE),--image-size $(IMAGE_SIZE))
NS_OPT    = $(if $(NS),--n $(NS))
LAYOUT_OPTS = $(if $(LAYOUT),--layout $(LAYOUT)) $(if $(LABELS),--labels $(LABELS)) $(if $(SPLIT),--split $(SPLIT))
CODE_OPTS = --data $(DATA) --backbone $(BACKBONE) $(LAYER_OPT) --pooling $(POOLING) --weights $(WEIGHTS) $(SIZE_OPT) --cache-dir $(CACHE)

RUN      ?= $(lastword $(sort $(wildcard $(RUNS)/*-$(BACKBONE)-$(HEAD))))
IMG      ?= examples/caltech5
MODEL    ?= $(RUN)

.PHONY: codes train sweep finetune scratch export predict compare report audit label test bench help
help:
	@echo "make codes [DATA=.. BACKBONE=.. LAYER=.. POOLING=avg|max|flatten WEIGHTS=.. IMAGE_SIZE=.. SPLIT=70/15/15"
	@echo "            LAYOUT=folders|split-folders|labels-file|names|unlabelled LABELS=labels.csv] (docs/data.md)"
	@echo "make train [HEAD=softmax|mlp|logreg|prototype, same code options; CODES='a.h5 b.h5': codes side by side]"
	@echo "make sweep [HEADS='softmax mlp logreg' NS='1 2 5 10 15 20 30 all' REPEATS=5]"
	@echo "make finetune [RUN=runs/<head run>, default the newest $(BACKBONE) $(HEAD) run]  make scratch"
	@echo "make report [RUN=.., default the newest $(BACKBONE) $(HEAD) run; a sweep: RUN=runs/<time>-sweep]"
	@echo "make audit [DATA=.. and the code options, or CODES=a.h5]: near-duplicates, leakage, label errors, outliers"
	@echo "make label [DATA=.. LABELS=labels.csv and the code options]: a local app to label what matters next"
	@echo "make export [RUN=..]   make predict IMG=image-or-folder [MODEL=run folder or .keras file]   make compare"
	@echo "every target: CACHE=cache RUNS=runs, ARGS='any other option of the cnn-codes command'"
	@echo "make test | make bench"

codes:
	$(CNN) codes $(CODE_OPTS) $(LAYOUT_OPTS) $(ARGS)

train:
	$(CNN) train --head $(HEAD) $(if $(CODES),--codes $(CODES),$(CODE_OPTS)) --runs-dir $(RUNS) $(ARGS)

sweep:
	$(CNN) sweep --data $(DATA) --backbone $(BACKBONE) $(LAYER_OPT) --pooling $(POOLING) --weights $(WEIGHTS) $(SIZE_OPT) --cache-dir $(CACHE) --heads $(HEADS) $(NS_OPT) --repeats $(REPEATS) --runs-dir $(RUNS) $(ARGS)

finetune:
	$(CNN) finetune $(RUN) --cache-dir $(CACHE) --runs-dir $(RUNS) $(ARGS)

scratch:
	$(CNN) scratch $(CODE_OPTS) --runs-dir $(RUNS) $(ARGS)

export:
	$(CNN) export $(RUN) $(ARGS)

predict:
	$(CNN) predict $(IMG) --model $(MODEL) $(ARGS)

compare:
	$(CNN) compare --runs-dir $(RUNS) $(ARGS)

report:
	$(CNN) report $(RUN) --open $(ARGS)

audit:
	$(CNN) audit $(if $(CODES),--codes $(CODES),$(CODE_OPTS)) --runs-dir $(RUNS) $(ARGS)

label:
	$(CNN) label $(CODE_OPTS) $(LAYOUT_OPTS) $(ARGS)

test:
	$(PYTHON) -m pytest -q

bench:
	$(PYTHON) benchmarks/bench_codes.py $(ARGS)
