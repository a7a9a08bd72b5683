"""Tools for testing code built on trioflow, and adapters written for it."""

from ._conformance import check_persistence_adapter as check_persistence_adapter
