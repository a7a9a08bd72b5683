"""From a review of how a process stop (SystemExit, KeyboardInterrupt) raised by user code the
engine runs leaves ``async with open_engine()`` (``_handed_on`` and the end of ``open_engine``),
the testing kit's portal and ``execute_workflow``. Each failed on 0b20f16; the first and the
last pass since the commit that added this file; the two between since the commit that raised
the stop keeping its context (``raise_keeping_context``)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.testing import engine_portal, open_test_engine


async def _exits_while_handling(ctx: tf.WorkflowContext) -> None:
    try:
        {}["db_url"]  # a config lookup that fails...
    except KeyError:
        raise SystemExit("no database configured")  # ...and the step's helper sys.exit()s


async def _exits(ctx: tf.WorkflowContext) -> None:
    raise SystemExit(3)


def test_wait_released_by_a_steps_system_exit_raises_engine_closed_error() -> None:
    """A service awaits ``engine.wait(iid)`` in the engine's block (README's first example; an
    HTTP handler mapping ``EngineClosedError`` to "shutting down, try later"). The instance's
    step calls ``sys.exit(3)``: the engine stops. README (The engine): ``wait()`` "raises
    ``EngineClosedError`` if the engine stops first". Was: in about half of the runs (trio's
    scheduling order), ``wait()`` raises ``InstanceNotLiveError("... is running in storage but
    not running in this engine; register its workflow or call resume()")``: wrong type and wrong
    advice (its workflow is registered). It was what the ``trioflow_engine`` fixture's test
    reports beside the SystemExit, and it becomes the bare SystemExit's ``__context__``."""
    seen: list[str] = []

    async def main() -> None:
        async with open_test_engine() as engine:
            engine.register(tf.workflow("exits").step("a", _exits).build())
            iid = await engine.start("exits")
            try:
                await engine.wait(iid)
            except BaseException as exc:
                seen.append(type(exc).__name__)
                raise

    for _ in range(30):
        try:
            tf.testing.run(main)
        except SystemExit:
            pass
    assert set(seen) == {"EngineClosedError"}, seen


def test_a_steps_system_exit_keeps_the_exception_it_was_raised_while_handling() -> None:
    """A step's helper catches a ``KeyError`` (missing config) and calls ``sys.exit("no database
    configured")``. README: the engine's block raises "the one user code raised, bare"; the user
    expects Python's usual traceback for it: "During handling of the above exception (KeyError
    'db_url') another exception occurred", as without trioflow (``execute_workflow`` keeps it for
    a plain step). Was: ``open_engine`` raises it at its end inside the block's ``__aexit__``,
    while the block's own exception (the ``trio.Cancelled`` the stop cut the block with, or the
    ``wait()``'s ``EngineClosedError``) is being handled: Python sets that as ``__context__``,
    so the traceback said the exit happened while handling a trio cancellation and the KeyError
    is gone. (It is intact when ``_handed_on`` picks it.) Now raised keeping its context."""

    async def main() -> None:
        async with open_test_engine() as engine:
            engine.register(tf.workflow("exits").step("a", _exits_while_handling).build())
            await engine.start("exits")
            await trio.sleep(60)

    raised: BaseException | None = None
    try:
        tf.testing.run(main)
    except SystemExit as exc:
        raised = exc
    assert raised is not None and raised.code == "no database configured"
    assert isinstance(raised.__context__, KeyError), repr(raised.__context__)
    assert not raised.__suppress_context__


def test_an_engine_portals_call_keeps_a_steps_system_exits_context() -> None:
    """docs/testing.md: ``portal.call`` "raises its exception", and leaving the block "raises
    what its run raised (a step's SystemExit, say)". A stateful test's step exits while
    handling a KeyError, as above; the test's author reads the traceback to find why. Was:
    ``EnginePortal._in_run`` re-raises the run's exception with ``raise failed from None`` inside
    its ``except (trio.RunFinishedError, trio.Cancelled)``: ``__context__`` is overwritten with
    trio's shutdown ``Cancelled`` (or ``RunFinishedError`` on later calls) and suppressed, the
    KeyError gone (the same object is raised again by each later call, its context rewritten
    each time)."""

    def setup(engine: tf.Engine) -> None:
        engine.register(tf.workflow("exits").step("a", _exits_while_handling).build())

    raised: BaseException | None = None
    try:
        with engine_portal(setup=setup) as portal:
            portal.call(lambda engine: engine.start("exits"))
    except SystemExit as exc:
        raised = exc
    assert raised is not None and raised.code == "no database configured"
    assert isinstance(raised.__context__, KeyError), repr(raised.__context__)
    assert not raised.__suppress_context__


def test_execute_workflow_keeps_a_branch_steps_system_exits_context() -> None:
    """``tf.execute_workflow`` (no engine) runs a parallel step one of whose branches exits while
    handling a KeyError, as above. The SystemExit comes out bare (it does, as for a plain
    step, where its ``__context__`` is the KeyError); the user expects the same traceback as for a
    plain step. Was: its ``__context__`` was trio's nursery group holding it (the fan-out
    unwraps the group by raising the leaf inside the handler), with ``__suppress_context__``
    set: the KeyError is gone. (The same for a map item.)"""
    async def ok(ctx: Any) -> int:
        return 1

    wf = (tf.workflow("fan").parallel("p", branches=[tf.branch("x").step("b1", _exits_while_handling).build(),
                                                     tf.branch("y").step("b2", ok).build()]).build())

    async def main() -> None:
        await tf.execute_workflow(None, wf, {})

    raised: BaseException | None = None
    try:
        tf.testing.run(main)
    except SystemExit as exc:
        raised = exc
    assert raised is not None and raised.code == "no database configured"
    assert isinstance(raised.__context__, KeyError), repr(raised.__context__)
    assert not raised.__suppress_context__
