"""The public classes' type hints resolve at run time (``typing.get_type_hints``,
``attrs.resolve_types``), as cattrs, pydantic and FastAPI-style serializers need to turn a
``WorkflowInstance`` into JSON. Every class reports ``trioflow`` as its module, and its
annotations (text) were read there, where none of the names they use are: ``NameError: name
'Any' is not defined`` for 19 of them (the newcomer review of December 5th)."""

from __future__ import annotations

import inspect
import typing
from types import ModuleType

import attrs
import pytest
import trioflow as tf
import trioflow.adapters
import trioflow.testing

FACADES = (tf, trioflow.adapters, trioflow.testing)


def _public(module: ModuleType) -> list[tuple[str, object]]:
    return [(name, getattr(module, name)) for name in dir(module)
            if not name.startswith("_") and (inspect.isclass(getattr(module, name))
                                             or inspect.isfunction(getattr(module, name)))]


@pytest.mark.parametrize("module", FACADES, ids=lambda m: m.__name__)
def test_every_public_class_and_function_has_type_hints_that_resolve(module: ModuleType) -> None:
    failed = {}
    for name, value in _public(module):
        try:
            typing.get_type_hints(value)
        except Exception as exc:  # (what a serializer would meet)
            failed[name] = f"{type(exc).__name__}: {exc}"
    assert not failed, failed


def test_attrs_resolves_a_workflow_instances_fields_to_the_public_classes() -> None:
    attrs.resolve_types(tf.WorkflowInstance)
    fields = attrs.fields(tf.WorkflowInstance)
    assert fields.history.type == tuple[tf.StepResult, ...]
    assert typing.get_type_hints(tf.StepResult)["attempts"] is int
    assert tf.WorkflowInstance.__module__ == "trioflow"
