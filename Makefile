# The two commands of the README are `make demo` and `make test`. Both set everything up
# on first use: Debian packages (scripts/bootstrap.sh), a virtualenv with the pinned
# Python stack (pyproject.toml + constraints.txt), and the Worker's npm packages.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY_STAMP   := $(VENV)/.installed
FONTS_STAMP := certificate_render/fonts/manifest.json
NODE_STAMP := cloudflare/node_modules/.installed
CDK_NODE_STAMP := node_modules/.installed
PYTEST_ARGS ?=

export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export WRANGLER_SEND_METRICS := false
export CDK_DISABLE_VERSION_CHECK := true

.PHONY: demo test lint typecheck pytest audit bench explore setup system format clean

demo: setup
	$(BIN)/python -m demo $(DEMO_ARGS)

test: setup lint typecheck audit pytest

ifneq ($(wildcard cloudflare/package-lock.json),)
setup: system $(PY_STAMP) $(FONTS_STAMP) $(NODE_STAMP)
else
setup: system $(PY_STAMP) $(FONTS_STAMP)
endif

# The pinned CDK CLI (package.json at the root) for `npx cdk synth/deploy`.
ifneq ($(wildcard package-lock.json),)
setup: $(CDK_NODE_STAMP)
endif

system:
	@scripts/bootstrap.sh

$(PY_STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required (set PYTHON=python3.11)"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[lambdas,infra,dev]'
	@touch $@

# The certificate renderer's fonts: Noto subsets cut from the Debian packages (a few minutes
# on first setup; the script skips the work when its manifest is current).
$(FONTS_STAMP): scripts/build_certificate_fonts.py $(PY_STAMP)
	$(BIN)/python scripts/build_certificate_fonts.py

$(NODE_STAMP): cloudflare/package.json cloudflare/package-lock.json
	@node -e 'if (+process.versions.node.split(".")[0] < 20) { console.error("Node 20+ is required"); process.exit(1) }'
	cd cloudflare && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(CDK_NODE_STAMP): package.json package-lock.json
	@node -e 'if (+process.versions.node.split(".")[0] < 20) { console.error("Node 20+ is required"); process.exit(1) }'
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

lint: $(PY_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(PY_STAMP)
	$(BIN)/mypy

pytest: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

# Dependency advisories (pip-audit, npm audit): reports, says clearly when the advisory services are
# unreachable, and fails only with AUDIT_STRICT=1 and a known vulnerability (docs/security.md).
audit: setup
	$(BIN)/python scripts/dependency_audit.py

# Property tests searched at random, several rounds (the suite runs a fixed, derandomized set).
explore: setup
	for round in 1 2 3 4 5; do HYPOTHESIS_PROFILE=explore $(BIN)/python -m pytest -q \
	  tests/results/test_properties.py tests/results/test_receiver_fuzz.py tests/contract/test_packing.py || exit 1; done

bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

format: $(PY_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) cloudflare/node_modules node_modules build cdk.out .pytest_cache .mypy_cache .ruff_cache
