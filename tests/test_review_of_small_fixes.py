"""An adversarial re-review of three small fixes: addc70f (the ``trioflow_engine`` fixture's
set-up checks), 6de717d (deep outputs, adapters' argument checks, ``check_switch``) and a6d9bea
(``on_step_complete`` handed a copy of a passed-on output).

Each test here fails on the main line as reviewed; its docstring says what a user relies on and
what happens instead."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import explore_crashes, open_test_engine

pytest_plugins = ["pytester"]


# -- a6d9bea: on_step_complete of a parallel or map step ---------------------------------------

def _tag_inner(name: str, output: Any, ctx: Any) -> None:
    """An ``on_step_complete`` audit hook that annotates the values it is handed (each branch's
    or item's output, for a fan-out step)."""
    inner = output.values() if isinstance(output, dict) else output if isinstance(output, list) else ()
    for value in inner:
        if isinstance(value, dict):
            value.setdefault("seen_by_hook", []).append(name)


async def _quote(ctx: Any) -> dict[str, Any]:
    return {"price": 10 if ctx.item is None else ctx.item}


async def _peek(ctx: Any) -> Any:
    return ctx.steps["quote"]


async def _refuse(ctx: Any) -> None:
    raise RuntimeError("refused")


async def test_a_parallel_steps_hook_cannot_edit_its_branches_outputs(
        autojump_clock: trio.testing.MockClock) -> None:
    """README "Events and hooks": in an engine ``on_step_complete``'s "``output`` is the hook's
    own, so its edits reach no later step"; a compensation gets the output of the execution it
    undoes, as a restart would read it (README "Storage and durability").

    Instead, a parallel step's hook is handed ``{branch: output}`` built from the branches' last
    *records' own* output objects (runtime/_decide.py:parallel_output; a6d9bea copies only a
    passed-on output): the hook's edit lands in ``P/b1/quote#1``'s record, so the later step
    ``peek`` reads ``{"price": 10, "seen_by_hook": ["P"]}`` from ``ctx.steps["quote"]``, and
    ``release`` is called with it, while ``get_instance()`` (storage) says ``{"price": 10}``."""
    released: list[Any] = []

    async def release(ctx: Any, held: Any) -> None:
        released.append(held)

    wf = (tf.workflow("fanned")
          .parallel("P", branches=[tf.branch("b1").step("quote", _quote, release).build()])
          .step("peek", _peek)
          .step("refuse", _refuse)
          .with_hooks(on_step_complete=_tag_inner)
          .build())
    async with open_test_engine() as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("fanned"))
    assert done.status == "failed" and done.compensated_steps == ("quote",)
    peeked = [r.output for r in done.history if r.step_name == "peek"]
    # Observed: [{"price": 10, "seen_by_hook": ["P"]}] for both.
    assert peeked == [{"price": 10}]
    assert released == [{"price": 10}]


async def test_a_map_steps_hook_cannot_edit_what_its_items_compensations_get(
        autojump_clock: trio.testing.MockClock) -> None:
    """The same for a map step: its output is the list of its items' *records' own* outputs
    (runtime/_map.py:map_output), handed as is to ``on_step_complete`` (actors/_lane.py:run_lane
    copies only when ``passes`` is set). The hook's edit reaches each item's record, and so each
    item's ``release``: ``{"price": 1, "seen_by_hook": ["M"]}`` rather than ``{"price": 1}``."""
    released: list[Any] = []

    async def release(ctx: Any, held: Any) -> None:
        released.append(held)

    wf = (tf.workflow("mapped")
          .map("M", items=lambda ctx: [1, 2], branch=tf.branch("item").step("quote", _quote, release).build())
          .step("refuse", _refuse)
          .with_hooks(on_step_complete=_tag_inner)
          .build())
    async with open_test_engine() as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("mapped"))
    assert done.status == "failed"
    # Observed: [{"price": 1, "seen_by_hook": ["M"]}, {"price": 2, "seen_by_hook": ["M"]}].
    assert sorted(released, key=lambda held: held["price"]) == [{"price": 1}, {"price": 2}]


async def test_a_parallel_steps_hook_edit_does_not_depend_on_a_restart(
        autojump_clock: trio.testing.MockClock) -> None:
    """``explore_crashes`` (a6d9bea's own yardstick): a run's output must not depend on whether a
    restart came between its steps. With the parallel step's hook editing the branch's record in
    memory, ``peek``'s output holds the edit without a crash and not after one past ``P``:
    CrashDivergenceError."""
    wf = (tf.workflow("fanned")
          .parallel("P", branches=[tf.branch("b1").step("quote", _quote).build()])
          .step("peek", _peek)
          .with_hooks(on_step_complete=_tag_inner)
          .build())
    report = await explore_crashes(wf, None)
    assert report.baseline.output == {"price": 10}


# -- addc70f: the plugin's set-up checks run before pytest's skip and xfail markers ------------

def _outcomes(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(source)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_a_skipped_engine_test_is_skipped_without_pytest_trio(pytester: pytest.Pytester) -> None:
    """A test marked ``@pytest.mark.skip`` is never set up (pytest's contract): a suite that
    skips its engine tests where pytest-trio is not installed relies on that.

    Instead, the plugin's ``pytest_runtest_setup`` is now ``tryfirst`` (addc70f), so it runs
    before pytest's own skipping hook and fails the skipped test with "needs pytest-trio" (the
    test was skipped before addc70f). runtime/testing/_pytest_plugin.py:pytest_runtest_setup."""
    result = _outcomes(pytester, """
        import pytest

        @pytest.mark.skip(reason="needs pytest-trio")
        async def test_engine(trioflow_engine):
            pass
    """, "-p", "no:trio")
    result.assert_outcomes(skipped=1)


def test_a_skipped_test_asking_for_the_engine_is_skipped(pytester: pytest.Pytester) -> None:
    """The same with pytest-trio: a skipped (or ``xfail(run=False)``) test is reported skipped
    (xfailed), whatever its fixtures, as it was before addc70f. Instead, the plugin's set-up
    check runs first and reports an error at set-up ("uses the trioflow_engine fixture, which is
    async", "... under hypothesis's @given") for tests pytest was told not to run at all."""
    result = _outcomes(pytester, """
        import pytest
        from hypothesis import given, strategies as st

        @pytest.mark.skip(reason="work in progress")
        def test_sync(trioflow_engine):
            pass

        @pytest.mark.skip(reason="work in progress")
        @given(st.integers())
        async def test_drawn(trioflow_engine, n):
            pass

        @pytest.mark.xfail(run=False, reason="known bug")
        def test_not_run(trioflow_engine):
            pass
    """)
    result.assert_outcomes(skipped=2, xfailed=1)


async def test_a_task_steps_hook_cannot_edit_the_shared_data_its_output_came_from(
        autojump_clock: trio.testing.MockClock) -> None:
    """README "Events and hooks": in an engine ``on_step_complete``'s "``output`` is the hook's
    own, so its edits reach no later step". A step that sets a cart in the shared data and
    returns it (``return ctx.get("cart")``) hands its hook the shared data's own object: the
    record keeps a read-back copy (actors/_run.py:Run.stage), but the hook gets what the step
    returned (actors/_lane.py:run_lane), so its edit reaches ``ctx.get("cart")`` in the next step,
    in memory only (a restart between the two reads the stored data without it). (Arguable: a
    hook may edit ``ctx.data`` on purpose; here it edits only the ``output`` it was handed.)"""
    async def fill(ctx: Any) -> Any:
        ctx.set("cart", {"n": 1})
        return ctx.get("cart")

    async def check_out(ctx: Any) -> Any:
        return ctx.get("cart")

    def tag(name: str, output: Any, ctx: Any) -> None:
        if isinstance(output, dict):
            output.setdefault("seen_by_hook", []).append(name)

    wf = (tf.workflow("cart").step("fill", fill).step("check_out", check_out)
          .with_hooks(on_step_complete=tag).build())
    async with open_test_engine() as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("cart"))
    # Observed: {"n": 1, "seen_by_hook": ["fill"]}.
    assert done.output == {"n": 1}
