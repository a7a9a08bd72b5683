"""The testing kit refuses what it cannot play, with trioflow's own error naming it, before
anything runs (the property-testing user review of December 5th):

- a scripted behaviour that cannot play (``sleeps(-1)``, ``raises("ConnectionError")``, a
  name where the class goes, ``times=0``) was accepted, and then failed the step under test
  with a bare ``ValueError`` / ``TypeError``, as if the workflow were wrong;
- ``explore_crashes(signals=...)`` took a misspelt signal name and explored the receive
  timing out (and passed), and a bare name (``["approve"]``) failed with ``ValueError: too
  many values to unpack``;
- ``explore_crashes`` on a ``MockClock`` that does not jump (pytest-trio's ``mock_clock``) hung
  for ever: it now makes it jump, as ``open_test_engine`` does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
import trioflow as tf
from trioflow.testing import ScriptedJob, explore_crashes, hangs, raises, returns, sleeps

BAD_BEHAVIOURS: dict[str, tuple[Callable[[], Any], str]] = {
    "negative sleep": (lambda: sleeps(-1), "seconds must be a finite number >= 0"),
    "endless sleep": (lambda: sleeps(float("inf")), "seconds must be a finite number >= 0"),
    "an error's name": (lambda: raises("ConnectionError"), "pass the class itself"),  # type: ignore[arg-type]
    "not an error": (lambda: raises(int), "exception class or instance"),  # type: ignore[arg-type]
    "plays never": (lambda: returns(1, times=0), "times must be a whole number >= 1"),
    "hangs never": (lambda: hangs(times=0), "times must be a whole number >= 1"),
    "then a value": (lambda: sleeps(1, then=5), "then must be made by returns(), raises(), sleeps() or hangs()"),  # type: ignore[arg-type]
    "an endless int": (lambda: sleeps(10**400), "seconds must be a finite number >= 0"),
    "times not whole": (lambda: returns(1, times=1.5), "times must be a whole number >= 1"),  # type: ignore[arg-type]
    "an error that cannot be made": (lambda: raises(ExceptionGroup), "pass an instance of it"),
    "not a behaviour": (lambda: ScriptedJob(1), "returns(1)"),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("case", list(BAD_BEHAVIOURS))
def test_a_behaviour_that_cannot_play_is_refused_as_it_is_made(case: str) -> None:
    make, says = BAD_BEHAVIOURS[case]
    with pytest.raises(tf.InvalidArgumentError) as caught:
        make()
    assert says in str(caught.value), caught.value


def _approval() -> tf.WorkflowDefinition:
    async def charge(ctx: tf.WorkflowContext) -> str:
        return "ch-1"

    return (tf.workflow("approve").step("charge", charge)
            .receive("approval", signal="approve", timeout=3600).build())


@pytest.mark.parametrize("signals, says", [
    ([("aprove", {"by": "ann"})], "takes signal 'aprove' (they take: 'approve')"),
    (["approve"], "(name, payload) pairs, got 'approve'"),
    ([("approve",)], "(name, payload) pairs"),
    ("approve", "a list of (name, payload) pairs"),
])
async def test_explore_crashes_refuses_signals_it_cannot_send_as_meant(
        autojump_clock: trio.testing.MockClock, signals: Any, says: str) -> None:
    with pytest.raises(tf.InvalidArgumentError) as caught:
        await explore_crashes(_approval(), signals=signals)
    assert says in str(caught.value), caught.value


async def test_explore_crashes_makes_a_mock_clock_jump(mock_clock: trio.testing.MockClock) -> None:
    """pytest-trio's ``mock_clock`` never jumps by itself: the approval's hour-long timeout
    would hang the test for ever."""
    report = await explore_crashes(_approval())
    assert report.baseline.status == "failed" and mock_clock.autojump_threshold == 0


async def test_a_run_that_never_ends_says_what_is_stuck(autojump_clock: trio.testing.MockClock) -> None:
    """It said only that the run had not ended after 3.2e+09 seconds."""
    workflow = tf.workflow("w").task("ship", job="ship").build()
    with pytest.raises(tf.TrioflowError) as caught:
        await explore_crashes(workflow, jobs={"ship": ScriptedJob(hangs())})
    assert "at step 'ship', running (it, or a step inside it, has no timeout= and never returns?)" in str(caught.value), caught.value


# From the review of the checks above (December 5th): what trio can play is still accepted (a
# numpy or Fraction number of seconds, a numpy count, a sleep then a hang or another sleep),
# a signal only a child takes is refused with the reason, and a stuck map names its state.
def test_what_can_play_is_still_accepted() -> None:
    import fractions

    sleeps(fractions.Fraction(1, 2))
    sleeps(0)
    returns(1, times=2**40)
    sleeps(1, then=hangs())
    sleeps(1, then=sleeps(2, returns(7)))
    raises(ExceptionGroup("both", [ValueError("a")]))
    raises(KeyboardInterrupt)

    class Count:  # (as numpy's integers are: an int by __index__)
        def __index__(self) -> int:
            return 2

    assert ScriptedJob(returns(1, times=Count()), returns(2)).behaviour(3) == returns(2)  # type: ignore[arg-type]


async def test_a_signal_only_a_child_takes_is_refused_with_the_reason(autojump_clock: trio.testing.MockClock) -> None:
    child = tf.workflow("kid").receive("approval", signal="approve", timeout=3600).build()
    parent = tf.workflow("parent").child("c", workflow="kid").build()
    with pytest.raises(tf.InvalidArgumentError, match="taken only by workflow 'kid', a child"):
        await explore_crashes(parent, also=[child], signals=[("approve", 1)])


async def test_a_stuck_map_item_is_reported_as_a_step_inside_the_map(autojump_clock: trio.testing.MockClock) -> None:
    workflow = tf.workflow("w").map("mp", items=lambda ctx: [1, 2],
                                    branch=tf.branch("it").task("ship", job="ship").build()).build()
    with pytest.raises(tf.TrioflowError, match="at step 'mp', running \\(it, or a step inside it, has no timeout="):
        await explore_crashes(workflow, jobs={"ship": ScriptedJob(hangs())})


async def test_open_test_engine_names_an_option_it_does_not_take(autojump_clock: trio.testing.MockClock) -> None:
    """A misspelt option passed a type checker (``**engine_options: Any``) and failed in
    open_engine with a bare ``TypeError`` (the property-testing user review)."""
    from trioflow.testing import open_test_engine

    with pytest.raises(tf.InvalidArgumentError, match="no option 'servces'; it takes open_engine's: adapter, "):
        async with open_test_engine(servces={}):
            pass
