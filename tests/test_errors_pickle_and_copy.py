"""Every error trioflow raises survives pickle (a process pool, a queue to another process)
and ``copy.deepcopy`` (of a result that holds one) with its type, message and attributes.
Most take the step's name and more where ``Exception`` pickles only the message: until the
commit that added this file, ``copy.deepcopy`` of a result that timed out raised TypeError."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf

_BRANCH = tf.BranchError("b", "t", ValueError("no"))
_ITEM = tf.ItemError("m", 3, "t", KeyError("k"))

#: One of each error trioflow exports, built as trioflow builds it.
SAMPLES: list[tf.TrioflowError] = [
    tf.TrioflowError("x"), tf.DefinitionError("d"), tf.UnknownWorkflowError("w"), tf.UnknownJobError("j"),
    tf.UnknownServiceError("s"), tf.UnknownInstanceError("i"), tf.UnencodableValueError("u"),
    tf.ValueTooLargeError("v"), tf.SnapshotDecodeError("s"), tf.DefinitionMismatchError("m"),
    tf.InvalidArgumentError("a"), tf.StorageError("s"), tf.AdapterInUseError("a"), tf.StorageUnavailableError("s"),
    tf.CheckpointConflictError("c"), tf.CompensationTimeoutError("s", 2.5), tf.InstanceIdConflictError("i"),
    tf.EngineClosedError("e"), tf.WrongTrioRunError("w"), tf.InstanceNotLiveError("i"),
    tf.InstanceStillRunningError("i", "running"),
    tf.StepError("s"), tf.StepTimeoutError("s", 1.0), tf.SignalTimeoutError("r", "approved", 60.0),
    tf.NoChoiceMatchedError("c"), tf.WorkflowTimeoutError("w", 30.0), tf.WorkflowCancelledError.of("i"),
    tf.FailStepError("Declined", "card declined"), _BRANCH, tf.ParallelError("p", [_BRANCH]), _ITEM,
    tf.MapError("m", [_ITEM], 10, 0), tf.ChildWorkflowError("c", "w", "failed", ValueError("no")),
    tf.ChildCompensationError("c", "its compensations failed"), tf.InvalidItemsError("m"),
    tf.RecordedError("Declined: card declined", named_by_workflow=True), tf.NotInStepError("n"),
]


def _attributes(error: BaseException) -> dict[str, Any]:
    # (Errors held inside compare by type and text: exceptions compare by identity.)
    return {key: (type(value), str(value)) if isinstance(value, BaseException) else value
            for key, value in vars(error).items()}


def test_the_samples_cover_every_error_trioflow_exports() -> None:
    exported = {value for name in dir(tf) if isinstance(value := getattr(tf, name), type)
                and issubclass(value, tf.TrioflowError)}
    assert exported == {type(error) for error in SAMPLES}


@pytest.mark.parametrize("error", SAMPLES, ids=lambda error: type(error).__name__)
@pytest.mark.parametrize("how", ["pickle", "deepcopy", "copy"])
def test_an_error_travels_whole(error: tf.TrioflowError, how: str) -> None:
    travelled = {"pickle": lambda e: pickle.loads(pickle.dumps(e)), "deepcopy": copy.deepcopy,
                 "copy": copy.copy}[how](error)
    assert type(travelled) is type(error)
    assert str(travelled) == str(error) and repr(travelled) == repr(error)
    assert _attributes(travelled) == _attributes(error)
    if isinstance(error, BaseExceptionGroup):
        assert [str(inner) for inner in travelled.exceptions] == [str(inner) for inner in error.exceptions]
        assert isinstance(travelled, tf.MapError) == isinstance(error, tf.MapError)
        part = travelled.split(tf.BranchError)[0]  # (what except* builds keeps the group's own parts)
        assert part is not None and _attributes(part) == _attributes(error)


def test_a_failed_result_deep_copies_and_pickles() -> None:
    """A result whose step timed out (its error a StepTimeoutError) copied as a whole."""
    async def slow(_: Any) -> None:
        await trio.sleep(5)

    async def main() -> tf.WorkflowResult:
        return await tf.execute_workflow(None, tf.workflow("w").task("a", job=slow, timeout=1).build(), None)

    result = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert isinstance(result.error, tf.StepTimeoutError)
    for copied in (copy.deepcopy(result), pickle.loads(pickle.dumps(result))):
        assert isinstance(copied.error, tf.StepTimeoutError)
        assert (copied.error.step_name, copied.error.timeout, str(copied.error)) == ("a", 1, str(result.error))
        assert copied.status == result.status == "failed"
