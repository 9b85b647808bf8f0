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

.PHONY: book test lint install clean system-deps vendor

# The environment: a local venv, torch pinned for this install (the package itself only asks torch>=2.2).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0" -e ".[book,test,train,web]"
	touch $(STAMP)

install: $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . $(JB_FLAGS)
	@echo
	@echo "The book is in _build/html/index.html. To read it, serve it and open http://localhost:8000 :"
	@echo "    python -m http.server -d _build/html"

# The browser test (tests/test_book.py) drives Debian's Chromium; CJK fonts render the Chinese examples.
# (The emoji font draws the exercises' ✅/❌ lines in the screenshots.) bubblewrap is the batch grader's sandbox.
# Installed with apt-get when missing and apt can be used (as root or with sudo); otherwise says how.
SYSTEM_PACKAGES := chromium fonts-noto-cjk fonts-noto-color-emoji bubblewrap
system-deps:
	@if dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSTEM_PACKAGES); \
	elif command -v apt-get >/dev/null && sudo -n true 2>/dev/null; then \
		sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSTEM_PACKAGES); \
	else \
		echo "The browser test needs $(SYSTEM_PACKAGES): install them (Debian: sudo apt-get install $(SYSTEM_PACKAGES))"; \
		echo "or point \$$CHROMIUM at a Chromium binary; without Chromium the browser test fails."; \
	fi

# Refresh the vendored JavaScript of the book (RequireJS, ipywidgets html-manager, MathJax): needs npm.
vendor:
	book/vendor.sh

# Lint and format checks (ruff, configured in pyproject.toml; `$(BIN)/ruff format .` applies the format).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two pytest workers on two cores: one math thread each (and in each notebook kernel), not two.
test: $(STAMP) system-deps lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(PYTEST_FLAGS) tests chapters book/walkthrough.ipynb exercises/[0-9]*.ipynb

clean:
	rm -rf _build
