"""Arguments that do not fit an engine call are refused with trioflow's own error, naming what
is wrong and the nearest keyword the call takes, as start()'s are (README, The engine). (Failed
until the commit that added this file: Python's TypeError, naming neither.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import trioflow as tf

CALLS: list[tuple[Callable[[Any], Awaitable[Any]], str]] = [
    (lambda e: e.signal("x", nam="go"), r"signal\(\): no keyword 'nam' \(did you mean name=\?\); name is missing"),
    (lambda e: e.cancel(), r"cancel\(\): instance_id is missing"),
    (lambda e: e.wait("a", "b"), r"wait\(\): 2 arguments given positionally, where it takes 1 \(instance_id\)"),
    (lambda e: e.get_instance(id="a"), r"get_instance\(\): no keyword 'id'"),
    (lambda e: e.get_instances(worklfow="w"),
     r"get_instances\(\): no keyword 'worklfow' \(did you mean workflow_name=\?\)"),
    (lambda e: e.purge(older=1), r"purge\(\): no keyword 'older' \(did you mean older_than=\?\)"),
]


@pytest.mark.parametrize("call, message", CALLS, ids=["signal", "cancel", "wait", "get_instance", "get_instances",
                                                       "purge"])
async def test_a_call_that_does_not_fit_is_refused_naming_what_is_wrong(
    call: Callable[[Any], Awaitable[Any]], message: str,
) -> None:
    async with tf.open_engine() as engine:
        with pytest.raises(tf.InvalidArgumentError, match=message):
            await call(engine)
