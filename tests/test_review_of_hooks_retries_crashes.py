"""A review of workflow hooks, retries with durable delays and catch routing, combined with
crashes and restarts (``explore_crashes``, engines closed and opened again on one storage).

Each test here fails on the main line as it was reviewed; its docstring says what a user relies
on, what happens instead, and where the README / SPEC say so."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, MemoryDriver
from trioflow.testing import explore_crashes, open_test_engine


def _tag_output(name: str, output: Any, ctx: Any) -> None:
    """An ``on_step_complete`` hook that notes, in the output it is handed, that it saw it (an
    audit hook that annotates what it logs, say)."""
    if isinstance(output, dict):
        output.setdefault("seen_by_hook", []).append(name)


async def _quote(ctx: Any) -> dict[str, Any]:
    return {"price": 10}


async def _total(ctx: Any) -> Any:
    return ctx.steps["quote"]


async def test_a_hook_handed_a_passed_on_output_cannot_change_what_later_steps_see(
        autojump_clock: trio.testing.MockClock) -> None:
    """SPEC §9: a hook "never changes the outcome"; README "Storage and durability": in an engine
    "a run goes on with what it stored, not with the objects it was given ... so a step behaves
    the same whether or not a restart came between", and each step "changes nothing stored and
    nothing a later step or attempt sees" by editing a value in place. A task step's
    ``on_step_complete`` gets such a copy (its edits reach nothing), and so does a receive step's
    (actors/_lane.py says "the hook's edits must not reach the record, as for any step").

    Instead, a step that passes its predecessor's output on (a ``wait``, a ``choice``, a ``pass``
    or ``succeed`` without a result) hands its hook the predecessor's *record's own* output object:
    the hook's edit lands in ``ctx.steps["quote"]`` of every later step, and in the workflow's
    output, in memory only. The crash explorer then finds the run's output depends on whether a
    restart came between: after a crash past "cool", only "route"'s edit is seen."""
    wf = (tf.workflow("quoted")
          .step("quote", _quote)
          .wait("cool", seconds=5)
          .choice("route", choices=[tf.when(lambda ctx: True, next="total")])
          .step("total", _total)
          .with_hooks(on_step_complete=_tag_output)
          .build())
    # (Fails with CrashDivergenceError: "crash after snapshot write 4 of 7 (step 'cool'
    # completed), then resume: output {'price': 10, 'seen_by_hook': ['route']}, the fault-free
    # run gave {'price': 10, 'seen_by_hook': ['cool', 'route']}".)
    report = await explore_crashes(wf, None)
    # And the fault-free output is the one the steps made: the hook changed nothing.
    assert report.baseline.output == {"price": 10}


async def test_a_hook_on_a_wait_step_does_not_edit_the_step_before_it_in_an_engine(
        autojump_clock: trio.testing.MockClock) -> None:
    """The same without a crash, as a user sees it in one engine: an ``on_step_complete`` hook
    that edits the output it is handed on a ``wait`` step (README "Events and hooks":
    ``on_step_complete(name, output, ctx)``) must not change the output of the step *before* it,
    which ``ctx.steps`` hands the later steps as a copy of what was stored (README "Storage and
    durability"), nor what ``wait()`` reports.

    Instead, ``total`` reads ``{"price": 10, "seen_by_hook": ["cool"]}`` from
    ``ctx.steps["quote"]``, and ``wait()``'s instance says ``quote#1`` returned that too, while
    ``get_instance()`` (read back from storage) says ``{"price": 10}``: one instance, two
    histories, and an output that a restart before "total" would not have given."""
    wf = (tf.workflow("quoted")
          .step("quote", _quote)
          .wait("cool", seconds=5)
          .step("total", _total)
          .with_hooks(on_step_complete=_tag_output)
          .build())
    async with open_test_engine() as engine:
        engine.register(wf)
        iid = await engine.start("quoted")
        done = await engine.wait(iid)
        stored = await engine.get_instance(iid)
    assert done.status == "completed" and stored is not None
    assert [(r.id, r.output) for r in stored.history][0] == ("quote#1", {"price": 10})
    # Observed: ("quote#1", {"price": 10, "seen_by_hook": ["cool"]}).
    assert [(r.id, r.output) for r in done.history][0] == ("quote#1", {"price": 10})
    assert done.output == stored.output == {"price": 10}


async def test_a_compensation_gets_the_output_its_step_returned_not_a_later_hooks_edit(
        autojump_clock: trio.testing.MockClock) -> None:
    """README "Failures, catching and compensation": "Saga compensations are called
    ``compensate(ctx, result)``" with the output of the execution they undo (each compensation
    gets "its own copy ... of the output it undoes", "Storage and durability"). A release keyed
    on what ``reserve`` returned must get exactly that, restart or not.

    Instead, an ``on_step_complete`` hook on the ``choice`` after ``reserve`` is handed
    ``reserve#1``'s own output object (the choice passes it on), and its edit is what
    ``release`` is later called with: ``{"price": 10, "seen_by_hook": ["route"]}``. After a
    restart between the choice and the failure, it would get ``{"price": 10}``."""
    released: list[Any] = []

    async def release(ctx: Any, held: Any) -> None:
        released.append(held)

    wf = (tf.workflow("reserved")
          .step("quote", _quote, release)
          .choice("route", choices=[tf.when(lambda ctx: True, next="refused")])
          .fail("refused", error="OrderRefused")
          .with_hooks(on_step_complete=_tag_output)
          .build())
    async with open_test_engine() as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("reserved"))
    assert done.status == "failed" and done.compensated_steps == ("quote",)
    # Observed: [{"price": 10, "seen_by_hook": ["route"]}].
    assert released == [{"price": 10}]


async def test_on_step_complete_in_a_transactional_run_runs_as_its_step_ends_and_again_after_a_rollback(
        autojump_clock: trio.testing.MockClock) -> None:
    """README "Events and hooks" (as decided after this review): a transactional workflow's
    ``on_step_complete`` runs as its step ends inside the transaction, as its
    ``workflow.step.completed`` is published, not once the commit stores it: progress shows
    while the transaction is open. A crash (or a close) before the commit rolls the run back,
    and the next engine runs the step, and so its hook, again: the review found the README
    promising "at most once per execution" for hooks without this exception, which events had.
    Pinned here: ``a#1``'s hook twice, once per run of it."""
    calls: list[tuple[str, str]] = []

    async def reserve(ctx: Any) -> int:
        return 1

    async def ship(ctx: Any) -> int:
        await trio.sleep(100)
        return 2

    async def release(ctx: Any, held: Any) -> None:
        pass

    def on_step_complete(name: str, output: Any, ctx: Any) -> None:
        calls.append((name, [r.id for r in ctx.instance.history if r.step_name == name][-1]))

    wf = (tf.workflow("tx")
          .step("a", reserve, release)
          .step("b", ship)
          .transactional()
          .with_hooks(on_step_complete=on_step_complete)
          .build())
    adapter, driver = MemoryAdapter(), MemoryDriver()
    async with open_test_engine(adapter=adapter, driver=driver) as engine:
        engine.register(wf)
        iid = await engine.start("tx")
        await trio.sleep(10)  # "b" runs; "a" returned inside the transaction
    async with open_test_engine(adapter=adapter, driver=driver) as engine:
        engine.register(wf)
        done = await engine.wait(iid)
    assert done.status == "completed"
    assert [r.id for r in done.history] == ["a#1", "b#1"]
    assert calls == [("a", "a#1"), ("a", "a#1"), ("b", "b#1")]
