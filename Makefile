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

typecheck: $(STAMP)
	PYTHON=$(abspath $(PY)) scripts/typecheck

test: $(STAMP) typecheck
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
