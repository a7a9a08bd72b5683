"""From a review ("rrargs") of c0f49a9, every public call refusing arguments that do not bind:
its behaviour, typing and cost held; four messages were wrong. Each test failed until the commit
that added this file, but the guard."""

from __future__ import annotations

import pytest

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import ScriptedJob, engine_portal, returns, run


def test_engine_portal_names_its_own_setup_keyword_when_misspelt() -> None:
    """A user writes ``engine_portal(stup=register_all)`` (a typo of its own ``setup=``) and
    expects, as for every other call, an error naming the nearest keyword: ``did you mean
    setup=?``. Was: ``engine_portal(): no option 'stup'; it takes open_engine's: adapter,
    max_running, ...``: the portal's own ``setup`` is neither suggested nor listed, so the
    message says the portal does not take the keyword the user meant."""
    with pytest.raises(tf.InvalidArgumentError) as caught:
        with engine_portal(stup=lambda engine: None):  # type: ignore[call-arg]
            pass
    assert "setup" in str(caught.value), str(caught.value)


def test_a_subclass_constructor_is_named_as_the_user_called_it() -> None:
    """docs/adapters.md has users write adapter subclasses (one that delays or counts signals).
    A user calls ``CountingAdapter(sigs=0)`` on such a subclass that keeps the base
    ``__init__``, and expects the message to name the call they wrote, ``CountingAdapter()``.
    Was: ``MemoryAdapter(): no keyword 'sigs'``: the message names the base class (fixed at
    decoration time from ``__init__.__qualname__``), a call the user never wrote."""

    class CountingAdapter(MemoryAdapter):
        pass

    with pytest.raises(tf.InvalidArgumentError) as caught:
        CountingAdapter(sigs=0)  # type: ignore[call-arg]
    assert str(caught.value).startswith("CountingAdapter()"), str(caught.value)


def test_self_given_as_a_keyword_is_not_called_an_unknown_keyword() -> None:
    """A method called unbound with ``self`` as a keyword, as Python allows
    (``tf.WorkflowBuilder.end(self=builder, nam="done")``, a typo of ``name``), should be refused
    for ``nam`` only, naming ``name=``. Was: ``end(): no keyword 'self'; no keyword 'nam' (did
    you mean name=?); ...``: the message says the method takes no ``self``, which it does (the
    same call with ``name=`` works)."""
    builder = tf.workflow("w")
    tf.WorkflowBuilder.end(self=builder, name="ok")  # (binds and runs: self is a keyword it takes)
    with pytest.raises(tf.InvalidArgumentError) as caught:
        tf.WorkflowBuilder.end(self=builder, nam="done")  # type: ignore[call-arg]
    message = str(caught.value)
    assert "did you mean name=?" in message and "no keyword 'self'" not in message, message


def test_what_a_call_takes_includes_its_star_args() -> None:
    """A user writes ``ScriptedJob(behaviours=[returns(1)])`` and is told what the call takes.
    They expect the list to say the behaviours are passed positionally. Was: ``ScriptedJob():
    no keyword 'behaviours'; it takes name``: ``*behaviours`` (and ``run()``'s ``*args``) is left
    out of "it takes" (runtime/_engine_arguments.py ``_unbound``: ``names`` drops
    VAR_POSITIONAL), so the message says the only thing ScriptedJob takes is ``name``."""
    with pytest.raises(tf.InvalidArgumentError) as caught:
        ScriptedJob(behaviours=[returns(1)])  # type: ignore[call-arg]
    assert "behaviours" in str(caught.value).split("; it takes ")[-1], str(caught.value)


def test_guard_a_type_error_from_user_code_under_a_wrapped_call_reaches_the_user() -> None:
    """(Guard, passes: fragile.) A TypeError the user's own code raises under a wrapped sync call
    that runs it (``trioflow.testing.run``, ``EnginePortal.call``) reaches the user as it was
    raised, even when it is itself a binding error of some other call."""
    async def main() -> None:
        sorted([], bogus=1)  # type: ignore[call-overload]

    with pytest.raises(TypeError) as caught:
        run(main)
    assert type(caught.value) is TypeError and "bogus" in str(caught.value)
    with engine_portal() as portal:
        with pytest.raises(TypeError) as caught:
            portal.call(lambda engine: len("a", 2))  # type: ignore[call-arg]
        assert type(caught.value) is TypeError
