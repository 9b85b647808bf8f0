# Two commands for readers and CI (see README.md):
#   make book   execute every chapter and build the HTML book into _build/html
#   make test   run every test: pytest over tests/, nbval over every notebook, the strict book build
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# A warning fails the build; -n also reports every broken cross-reference.
JB_FLAGS := -W -n --keep-going
# --dist loadscope keeps all cells of one notebook on one worker (nbval needs that).
PYTEST_FLAGS := -p no:cacheprovider --nbval-lax -n 2 --dist loadscope

.PHONY: book test install clean

# The environment: a local venv, torch pinned for this install (the package itself only asks torch>=2.2).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0" -e ".[book,test,train]"
	touch $(STAMP)

install: $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . $(JB_FLAGS)
	@echo
	@echo "The book is in _build/html/index.html. To read it, serve it and open http://localhost:8000 :"
	@echo "    python -m http.server -d _build/html"

# Two pytest workers on two cores: one math thread each (and in each notebook kernel), not two.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(PYTEST_FLAGS) tests chapters

clean:
	rm -rf _build
