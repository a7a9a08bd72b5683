"""State machines, definitions and releases (an adversarial review; each test failed before its
fix): steps that never await, async choice conditions, a compensation in progress or an
instance that ran nothing under a new release, and builder options of the wrong type."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine, virtual_wall_clock


async def _ident(data: Any) -> Any:
    return data


# --- 1. steps that never await starve the whole engine (MemoryAdapter) ------------------------

def test_tight_choice_loop_does_not_freeze_the_engine_or_escape_its_timeout() -> None:
    """A pass/choice loop on the default MemoryAdapter never yields to trio: the workflow's
    with_timeout never fires, and no other task (the caller's move_on_after included) ever runs
    again. Real clock, subprocess, so that the hang is reported rather than hanging pytest."""
    program = textwrap.dedent("""
        import trio, trioflow as tf
        async def main():
            wf = (tf.workflow("w").pass_("p", result=1)
                  .choice("c", choices=[tf.when(lambda ctx: True, next="p")], default="e").end("e")
                  .with_timeout(1).build())
            async with tf.open_engine() as engine:          # MemoryAdapter (the default)
                engine.register(wf)
                iid = await engine.start("w")
                with trio.move_on_after(3):
                    print((await engine.wait(iid)).status, flush=True)
                print("caller ran again", flush=True)
                await engine.cancel(iid)
        trio.run(main)
    """)
    try:
        out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("the engine (and the whole trio run) froze: with_timeout(1) never fired, "
                    "move_on_after(3) in the caller never fired")
    assert "timed_out" in out.stdout, out


async def test_steps_that_do_not_await_let_other_tasks_run(autojump_clock: trio.testing.MockClock) -> None:
    """Deterministic in-process form of the same bug: while an instance loops 200 times through
    a pass and a choice, another task of the same trio run never gets scheduled once."""
    ticks = 0
    seen: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        for _ in range(1_000_000):
            await trio.lowlevel.checkpoint()
            ticks += 1

    def again(ctx: Any) -> bool:
        seen.append(ticks)
        return len(seen) < 200

    wf = (tf.workflow("w").task("t", job=_ident)
          .choice("c", choices=[tf.when(again, next="t")], default="e").end("e").build())
    async with open_test_engine() as engine, trio.open_nursery() as nursery:
        engine.register(wf)
        nursery.start_soon(ticker)
        await trio.lowlevel.checkpoint()
        with trio.fail_after(60):
            inst = await engine.wait(await engine.start("w", 1))
        nursery.cancel_scope.cancel()
    assert inst.status == "completed"
    assert seen[-1] > seen[0], f"no other task ran during 200 loop iterations (ticks stuck at {seen[0]})"


# --- 2. an async choice condition is never awaited: always "true" -----------------------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
async def test_async_choice_condition_is_not_silently_truthy(autojump_clock: trio.testing.MockClock) -> None:
    """tf.when(async_fn, ...) is accepted by build(); at run time the coroutine object it returns
    is truthy, so the first rule always wins and the coroutine is never awaited (a
    'never awaited' RuntimeWarning is all that shows). Either build() must refuse it
    (DefinitionError) or the engine must await it; silently taking the wrong branch is neither."""
    async def is_vip(ctx: Any) -> bool:
        return bool(ctx.input["vip"])

    try:
        wf = (tf.workflow("w").choice("c", choices=[tf.when(is_vip, next="vip")], default="normal")
              .pass_("vip", result="vip", end=True).pass_("normal", result="normal").build())
    except tf.DefinitionError:
        return  # refused up front: fine
    async with open_test_engine() as engine:
        engine.register(wf)
        inst = await engine.wait(await engine.start("w", {"vip": False}))
    assert inst.output == "normal", f"a non-VIP was routed to {inst.output!r}"


# --- 3. a compensating instance resumed under a changed definition abandons its compensations --

async def test_compensation_in_progress_survives_a_definition_change(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """v1: reserve -> charge -> ship; ship fails; compensation of charge is running when the
    engine stops. v2 renames 'ship' to 'ship-v2'. On resume, the instance only needs its
    records to finish compensating, but misfit() looks at the (irrelevant) lane position
    'ship', and _resume_one() calls fail_alone(): 'reserve' is never released, the refund is
    never retried, and the original error (ValueError) is replaced by DefinitionMismatchError.
    README (Registration): "one that no longer fits it fails with DefinitionMismatchError and
    compensates what it can"; (Compensation): "Every completed step with a compensation is
    compensated exactly once"."""
    log: list[str] = []
    clock = virtual_wall_clock()

    def wf(ship_name: str) -> tf.WorkflowDefinition:
        async def job(data: Any) -> str:
            return "ok"

        async def ship(data: Any) -> str:
            raise ValueError("no courier")

        async def release(out: Any) -> None:
            log.append("release")

        async def refund(out: Any) -> None:
            log.append("refund-start")
            await trio.sleep(100)
            log.append("refund-done")

        return (tf.workflow("order")
                .task("reserve", job=job, compensate=release)
                .task("charge", job=job, compensate=refund)
                .task(ship_name, job=ship).build())

    db = tmp_path / "f.db"
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=clock) as engine:
        engine.register(wf("ship"))
        iid = await engine.start("order")
        await trio.sleep(10)          # ship failed; refund is running
    assert log == ["refund-start"]

    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=clock) as engine:
        engine.register(wf("ship-v2"))
        with trio.fail_after(10_000):
            inst = await engine.wait(iid)

    assert "release" in log, f"the reservation was never released: {log}, {inst.status}, {inst.error}"
    assert inst.compensated_steps == ("charge", "reserve"), inst.compensated_steps


# --- 4. an instance that never ran starts at the OLD first step under a new release -----------

async def test_delayed_instance_runs_the_new_releases_first_step(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """Started with delay=3600 under v1 (a). v2 adds a first step 'validate' before 'a'. When the
    delay is over, the instance (which has run nothing) starts at its stored position 'a' and
    silently skips 'validate'. README: "A replaced definition is used by instances started from
    then on and by instances taken up from storage"."""
    log: list[str] = []
    clock = virtual_wall_clock()

    def mk(name: str) -> Any:
        async def job(data: Any) -> str:
            log.append(name)
            return name
        return job

    v1 = tf.workflow("w").task("a", job=mk("a")).build()
    v2 = tf.workflow("w").task("validate", job=mk("validate")).task("a", job=mk("a")).build()
    db = tmp_path / "f.db"
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=clock) as engine:
        engine.register(v1)
        iid = await engine.start("w", 1, delay=3600)
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=clock) as engine:
        engine.register(v2)
        inst = await engine.wait(iid)
    assert inst.status == "completed"
    assert log == ["validate", "a"], log


async def test_delayed_instance_whose_first_step_was_renamed_does_not_fail(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """Same, with v2 renaming the first step: the instance, which never ran a step, fails with
    DefinitionMismatchError ("step 'a', where the instance stands, is no longer in ...")."""
    clock = virtual_wall_clock()
    v1 = tf.workflow("w").task("a", job=_ident).build()
    v2 = tf.workflow("w").task("a1", job=_ident).build()
    db = tmp_path / "f.db"
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=clock) as engine:
        engine.register(v1)
        iid = await engine.start("w", 1, delay=3600)
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=clock) as engine:
        engine.register(v2)
        inst = await engine.wait(iid)
    assert inst.status == "completed", inst.error


# --- 5. builder errors that are not TrioflowError ---------------------------------------------

def _branch() -> tf.Branch:
    return tf.branch("b").task("bt", job=_ident).build()


BUILDER_CASES = {
    "choices=[a lambda] (not tf.when)":
        lambda: tf.workflow("w").choice("c", choices=[lambda c: True], default="a").task("a", job=_ident).build(),
    "choices=None":
        lambda: tf.workflow("w").choice("c", choices=None, default="a").task("a", job=_ident).build(),
    "branches=None":
        lambda: tf.workflow("w").parallel("p", branches=None).build(),
    "with_data(5)":
        lambda: tf.workflow("w").with_data(5),
    "step name with a lone surrogate":
        lambda: tf.workflow("w").task("s\ud800", job=_ident).build(),
    "branch name with a lone surrogate":
        lambda: tf.workflow("w").parallel("p", branches=[tf.branch("b\udc80").task("a", job=_ident).build()]).build(),
    "compensate='' (empty job name)":
        lambda: tf.workflow("w").task("a", job=_ident, compensate="").build(),
}


@pytest.mark.parametrize("label", list(BUILDER_CASES))
def test_builder_rejects_with_a_definition_error(label: str) -> None:
    """README: build() rejects "malformed options" with a DefinitionError naming the step."""
    with pytest.raises(tf.DefinitionError):
        BUILDER_CASES[label]()


def test_one_rule_or_one_branch_alone_is_taken_as_a_list_of_one() -> None:
    # As catch= takes one Catch alone.
    choice = tf.workflow("w").choice("c", choices=tf.when(lambda c: True, next="a")).task("a", job=_ident).build()
    parallel = tf.workflow("w").parallel("p", branches=_branch()).build()
    assert len(choice.steps[0].choices) == 1 and len(parallel.steps[0].branches) == 1  # type: ignore[attr-defined]


def test_an_async_pass_transform_is_refused_by_build() -> None:
    async def transform(ctx: Any) -> int:
        return 1

    with pytest.raises(tf.DefinitionError, match="async function"):
        tf.workflow("w").pass_("p", transform=transform).build()


async def test_an_async_input_mapper_is_awaited(autojump_clock: trio.testing.MockClock) -> None:
    # As map items= and child input= are: an input= that is an async def gives its value once awaited.
    async def fetch(ctx: Any) -> dict[str, int]:
        await trio.sleep(1)
        return {"n": ctx.input + 1}

    wf = tf.workflow("w").task("a", job=_ident, input=fetch).build()
    async with open_test_engine() as engine:
        engine.register(wf)
        inst = await engine.wait(await engine.start("w", 1))
    assert (inst.status, inst.output) == ("completed", {"n": 2})
