# The two set-up commands are `make demo` and `make test`; each installs what it needs first.
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup setup-ad demo test lint pytest bench mutate lock clean

setup:
	@scripts/bootstrap

setup-ad:
	@scripts/bootstrap --ad

demo: setup
	@$(BIN)/python -m scimsync.demo

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# Bytecode first: where PYTHONDONTWRITEBYTECODE is set (it is on these machines), every
# `scimsync` process the tests start would compile the package again (0.4 s each).
pytest: setup-ad
	$(BIN)/python -m compileall -q src
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint pytest

bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

# Mutation testing (slow; not in `make test`), one pass per layer: MUTATE_PASSES names some,
# e.g. MUTATE_PASSES="core store" (passes: core store executor changes changes-ad).
mutate: setup-ad
	@scripts/mutate $(MUTATE_PASSES)

# Regenerate requirements/*.txt (pinned, with hashes) after changing pyproject.toml's
# dependencies or requirements/*.in; LOCK_ARGS=--upgrade moves every pin to the newest release.
lock:
	@scripts/lock $(LOCK_ARGS)

clean:
	rm -rf $(VENV) .venv-canaille .mypy_cache .pytest_cache .ruff_cache mutants build/mutate
