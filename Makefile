# Two entry points that do all set-up themselves: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test typecheck clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/checkout_saga.py
	$(PY) examples/ecommerce_sqlite.py
	$(PY) examples/order_state_machine.py
	$(PY) examples/onboarding.py
	$(PY) examples/checkout_catch.py
	$(PY) examples/approval.py
	$(PY) examples/batch_invoices.py
	$(PY) examples/subscription.py

typecheck: $(STAMP)
	PYTHON=$(abspath $(PY)) scripts/typecheck

test: $(STAMP) typecheck
	# (One worker a core, four at most: the suite is mostly CPU-bound trio runs and processes
	# of its own; xdist's workers share nothing but the hypothesis database.)
	$(PY) -m pytest -q -n auto --maxprocesses=4

clean:
	rm -rf $(VENV) build *.egg-info
