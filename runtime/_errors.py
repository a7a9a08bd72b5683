"""trioflow's exception hierarchy: one root, flat classes, builtin mix-ins where they fit.

Every error a caller can get from trioflow derives from :class:`TrioflowError`, so a service can
catch "anything the orchestrator said" in one place, while the builtin mix-ins keep ordinary
``except ValueError`` / ``except LookupError`` code working.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any


class TrioflowError(Exception):
    """Root of every error trioflow raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its message, its attributes set after (as BaseException's own reduce
        # does: an attribute that refers back to the error is then the copy itself), not by
        # calling ``__init__`` with ``self.args`` (the message, where most of these take the
        # step's name and more): so pickle (a process pool, a queue to another process) and
        # copy.deepcopy work for all.
        return _rebuilt, (type(self), self.args), dict(self.__dict__)


def _rebuilt(cls: type[TrioflowError], args: tuple[Any, ...]) -> TrioflowError:
    """An error of ``cls`` with ``args``, its ``__init__`` not called (see
    :meth:`TrioflowError.__reduce__`): made by its first builtin base (a group's keeps its
    message and errors; a ``TimeoutError``'s is ``OSError``'s), not by a ``__new__`` of ours."""
    builtin = next(base for base in cls.__mro__ if base.__module__ == "builtins")
    error: TrioflowError = builtin.__new__(cls, *args)
    error.args = args
    return error


class DefinitionError(TrioflowError, ValueError):
    """A workflow definition is invalid; the message names the step (raised by ``build()``)."""


class UnknownWorkflowError(TrioflowError, LookupError):
    """No workflow of that name is registered with the engine."""


class UnknownJobError(TrioflowError, LookupError):
    """A task refers to a job name nobody registered."""


class UnknownServiceError(TrioflowError, LookupError):
    """``ctx.resolve(name)`` asked for a service the engine or call was not given."""


class UnknownInstanceError(TrioflowError, LookupError):
    """No instance with that id exists in the engine's adapter."""


class UnencodableValueError(TrioflowError, TypeError):
    """A value that must be stored (input, output, shared data) cannot be encoded by msgpack."""


class ValueTooLargeError(UnencodableValueError):
    """A value that must be stored is larger than the codec's limit (the message names it)."""


class SnapshotDecodeError(TrioflowError, ValueError):
    """A stored snapshot cannot be read (corrupt, foreign, or from a newer format version)."""


class DefinitionMismatchError(TrioflowError):
    """A stored instance no longer fits the registered definition of its workflow."""


class InvalidArgumentError(TrioflowError, ValueError):
    """An argument to an engine call is not acceptable (the message names it)."""


class StorageError(TrioflowError):
    """The persistence adapter could not store or read what it was asked to."""


class AdapterInUseError(StorageError):
    """The storage is open in another engine already: one engine per storage, or both would
    resume (and run) the same instances."""


class StorageUnavailableError(StorageError):
    """Storage failed in a way that may pass (busy, locked by another connection, full, failing
    I/O). The engine retries a checkpoint for a while; if storage stays unusable, the instance is
    left as it was last stored, resumable, and ``wait()`` raises this error saying so."""


class CheckpointConflictError(StorageError):
    """A checkpoint would append records at a position the stored instance is not at (a write
    repeated after it had landed, or one lost before it): refused, with nothing written."""


class CompensationTimeoutError(TrioflowError, TimeoutError):
    """A compensation ran longer than its workflow's ``compensation_timeout`` (all attempts)."""

    def __init__(self, step_name: str, timeout: float) -> None:
        super().__init__(f"compensation of step {step_name!r} did not finish within {timeout:g} s")
        self.step_name = step_name
        self.timeout = timeout


class InstanceIdConflictError(TrioflowError, ValueError):
    """``start(..., instance_id=X)`` where X already belongs to another workflow, or to one
    started with another input (running or not)."""


class EngineClosedError(TrioflowError, RuntimeError):
    """The engine was used after its ``async with`` block ended."""


class WrongTrioRunError(TrioflowError, RuntimeError):
    """The engine was called from another trio run (another thread's ``trio.run``) than the one
    it runs in: refused before anything is done. From another thread, call it through
    ``trio.from_thread.run(..., trio_token=engine.trio_token)``."""


class InstanceNotLiveError(TrioflowError, RuntimeError):
    """``wait()`` on an instance that is running in storage but not in this engine."""


class InstanceStillRunningError(TrioflowError, RuntimeError):
    """An adapter was asked to delete an instance that has not finished (``pending`` or
    ``running``): refused, with nothing deleted, because its run would store it again at its
    next checkpoint. Cancel it and wait for it to end first."""

    def __init__(self, instance_id: str, status: str) -> None:
        super().__init__(
            f"instance {instance_id!r} is {status}: only a finished instance can be deleted (cancel it and"
            " wait for it to end first); nothing was deleted"
        )
        self.instance_id = instance_id
        self.status = status


class StepError(TrioflowError):
    """Base of the errors that describe why one step failed."""


class StepTimeoutError(StepError, TimeoutError):
    """One attempt of a step ran longer than the step's ``timeout``."""

    def __init__(self, step_name: str, timeout: float) -> None:
        super().__init__(f"step {step_name!r} timed out after {timeout:g} s")
        self.step_name = step_name
        self.timeout = timeout


class SignalTimeoutError(StepError, TimeoutError):
    """A receive step's signal did not arrive within its ``timeout`` (catchable)."""

    def __init__(self, step_name: str, signal: str, timeout: float) -> None:
        super().__init__(f"step {step_name!r}: no signal {signal!r} arrived within {timeout:g} s")
        self.step_name = step_name
        self.signal = signal
        self.timeout = timeout


class NoChoiceMatchedError(StepError):
    """A choice step found no matching condition and has no ``default``."""

    def __init__(self, step_name: str) -> None:
        super().__init__(f"choice step {step_name!r}: no choice matched and there is no default")
        self.step_name = step_name


class WorkflowTimeoutError(TrioflowError, TimeoutError):
    """The whole workflow ran longer than its ``with_timeout``."""

    def __init__(self, workflow_name: str, timeout: float) -> None:
        super().__init__(f"workflow {workflow_name!r} timed out after {timeout:g} s")
        self.workflow_name = workflow_name
        self.timeout = timeout


class WorkflowCancelledError(TrioflowError):
    """The instance was cancelled (``engine.cancel`` or the caller's cancellation)."""

    @classmethod
    def of(cls, instance_id: str) -> WorkflowCancelledError:
        """The error a cancelled instance ends with."""
        return cls(f"instance {instance_id!r} was cancelled")


class FailStepError(StepError):
    """The failure a ``fail`` step ends its lane with: the error name and cause it gives, which
    are recorded as they are (not this class's name)."""

    def __init__(self, error_name: str, cause: str) -> None:
        super().__init__(cause)
        self.error_name = error_name
        self.cause = cause


class BranchError(TrioflowError):
    """A step inside a parallel branch failed; names the branch and the step."""

    def __init__(self, branch_name: str, step_name: str, error: BaseException) -> None:
        super().__init__(f"branch {branch_name!r}, step {step_name!r}: {describe_error(error)}")
        self.branch_name = branch_name
        self.step_name = step_name
        self.error = error


class ParallelError(ExceptionGroup[BranchError], TrioflowError):
    """A ``wait-all`` parallel step in which one or more branches failed: all their errors,
    each named in the message with its branch, error name and cause."""

    step_name: str

    if TYPE_CHECKING:
        # Built flat only (``__new__``, ``derive``): its branches' errors, no nested group.
        @property
        def exceptions(self) -> tuple[BranchError, ...]: ...

    def __new__(cls, step_name: str, errors: Sequence[BranchError]) -> ParallelError:
        self = super().__new__(cls, _parallel_message(step_name, errors), errors)
        self.step_name = step_name
        return self

    def __init__(self, step_name: str, errors: Sequence[BranchError]) -> None:
        super().__init__(_parallel_message(step_name, errors), errors)

    def __str__(self) -> str:
        # The message already names every branch's error: no "(2 sub-exceptions)" suffix.
        return self.message

    def derive(self, excs: Sequence[BranchError]) -> ParallelError:  # type: ignore[override]
        return ParallelError(self.step_name, excs)


class ItemError(BranchError):
    """A step of one item of a map step failed; names the map, the item's index and the step."""

    def __init__(self, map_step: str, index: int, step_name: str, error: BaseException) -> None:
        TrioflowError.__init__(self, f"map step {map_step!r}, item {index}, step {step_name!r}: {describe_error(error)}")
        self.branch_name = f"{map_step}[{index}]"
        self.map_step = map_step
        self.index = index
        self.step_name = step_name
        self.error = error


#: Item errors a :class:`MapError`'s message names; the rest are counted.
_ITEMS_NAMED = 5


class MapError(ExceptionGroup[ItemError], TrioflowError):
    """More items of a map step failed than it tolerates (or, with ``on_error="wait-all"``, any
    did and it tolerates none): their errors, the first few named in the message."""

    step_name: str
    #: How many items the map had, and how many failures it tolerated.
    total: int
    tolerated: int

    if TYPE_CHECKING:
        # Built flat only (``__new__``, ``derive``): its items' errors, no nested group.
        @property
        def exceptions(self) -> tuple[ItemError, ...]: ...

    def __new__(cls, step_name: str, errors: Sequence[ItemError], total: int, tolerated: int) -> MapError:
        self = super().__new__(cls, _map_message(step_name, errors, total, tolerated), errors)
        self.step_name, self.total, self.tolerated = step_name, total, tolerated
        return self

    def __init__(self, step_name: str, errors: Sequence[ItemError], total: int, tolerated: int) -> None:
        super().__init__(_map_message(step_name, errors, total, tolerated), errors)

    def __str__(self) -> str:
        return self.message

    def derive(self, excs: Sequence[ItemError]) -> MapError:  # type: ignore[override]
        # (What ``except*`` and ``split()`` build: a part of the same map's failures, out of
        # as many items, as many tolerated.)
        return MapError(self.step_name, excs, self.total, self.tolerated)


def _map_message(step_name: str, errors: Sequence[ItemError], total: int, tolerated: int) -> str:
    named = "; ".join(f"item {e.index} failed with {_name_and_cause(e.error)}" for e in errors[:_ITEMS_NAMED])
    more = f"; and {len(errors) - _ITEMS_NAMED} more" if len(errors) > _ITEMS_NAMED else ""
    return (f"map step {step_name!r}: {len(errors)} of {total} items failed, {tolerated} tolerated: {named}{more}")


class ChildWorkflowError(StepError):
    """A child step's child instance ended without completing (failed, cancelled, timed out):
    names the child, its workflow and how it ended; ``error`` is the child's own error, which
    the step is recorded and caught by (a catch for ``"CardDeclined"`` matches a child that
    failed with it)."""

    def __init__(self, child_id: str, workflow: str, status: str, error: BaseException) -> None:
        # The marker is part of the record a restart reads back: see :meth:`read_back`.
        at = _AT_FAIL_STEP if isinstance(error, RecordedError) and error.named_by_workflow else ""
        super().__init__(f"{_child(child_id, workflow)}{status}{at}: {describe_error(error)}")
        self.child_id = child_id
        self.workflow = workflow
        self.status = status
        self.error = error

    @classmethod
    def read_back(cls, description: str, child_id: str, workflow: str) -> tuple[bool, bool]:
        """What a child step's recorded error (``describe_error`` of what the step raised) says
        once the exception itself went with a restart: whether it was one of these (its child
        ended badly; not: its input failed, say), and whether the child failed at a fail step
        (its error then named by the workflow's own text, see ``RecordedError``)."""
        written = f"{cls.__name__}: {_child(child_id, workflow)}"
        if not description.startswith(written):
            return False, False
        return True, description.startswith(f"{written}failed{_AT_FAIL_STEP}: ")


def _child(child_id: str, workflow: str) -> str:
    return f"child {child_id!r} of workflow {workflow!r} "


#: How a :class:`ChildWorkflowError` says its child failed at a fail step.
_AT_FAIL_STEP = " at a fail step"


class ChildCompensationError(TrioflowError):
    """Compensating a child instance as a unit did not undo all of it: names the child and
    what went wrong (its compensations that failed, or why it could not be compensated)."""

    def __init__(self, child_id: str, problem: str) -> None:
        super().__init__(f"child {child_id!r}: {problem}")
        self.child_id = child_id


class InvalidItemsError(StepError, TypeError):
    """A map step's ``items(ctx)`` gave something that is not a list of items."""


def _parallel_message(step_name: str, errors: Sequence[BranchError]) -> str:
    failed = "; ".join(f"branch {e.branch_name!r} failed with {_name_and_cause(e.error)}" for e in errors)
    return f"parallel step {step_name!r}: {failed}"


def _name_and_cause(error: BaseException) -> str:
    cause = error_cause(error)
    return f"{error_name(error)}: {cause}" if cause else error_name(error)


class RecordedError(TrioflowError):
    """An error known only as it was recorded (a step that failed for good before a restart):
    described exactly as it was, with the name and cause it was recorded with."""

    def __init__(
        self, description: str, error_name: str | None = None, cause: str | None = None, *,
        raised_as: type[BaseException] | None = None, named_by_workflow: bool = False,
    ) -> None:
        super().__init__(description)
        self.error_name = error_name or split_description(description)[0]
        self.cause = cause if cause is not None else split_description(description)[1]
        #: The trioflow class the failure was raised as, where the failed step's kind tells (a
        #: fail step's :class:`FailStepError`, a child step's :class:`ChildWorkflowError`): a
        #: catch for that class matches it after a restart as it did before.
        self.raised_as = raised_as
        #: Whether ``error_name`` is a ``fail`` step's own text rather than a class's name (a
        #: child, or a child's child, that ended at one): it names no exception, whatever it
        #: reads like.
        self.named_by_workflow = named_by_workflow


def root_error(error: BaseException) -> BaseException:
    """The error a failure is about: a branch's (or map item's, or child's) own error rather
    than the :class:`BranchError` or :class:`ChildWorkflowError` wrapping it (a fail-fast
    parallel step fails with its first branch's error)."""
    return wrapped_errors(error)[-1]


def wrapped_errors(error: BaseException) -> list[BaseException]:
    """``error`` and each error it wraps, outermost first, down to :func:`root_error`'s (a map
    item's :class:`ItemError`, the :class:`ChildWorkflowError` its child step failed with, the
    child's own error; the one error of an exception group holding one, which is what a job
    running a nursery of its own raises when one of its tasks fails)."""
    chain = [error]
    while True:
        if isinstance(error, (BranchError, ChildWorkflowError)):
            error = error.error
        elif (alone := _alone_in_group(error)) is not None:
            error = alone
        else:
            return chain
        chain.append(error)


def _alone_in_group(error: BaseException) -> BaseException | None:
    """The one error of an exception group holding one (not one of trioflow's own, which name
    what failed: a parallel or map step's); else ``None``."""
    if isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1 and not isinstance(error, TrioflowError):
        return error.exceptions[0]
    return None


def error_name(error: BaseException) -> str:
    """The name a failure is recorded and matched by: the exception's class name, or the name
    a ``fail`` step (or an earlier record) gave it."""
    error = root_error(error)
    if isinstance(error, (FailStepError, RecordedError)):
        return error.error_name
    return type(error).__name__


def error_cause(error: BaseException) -> str:
    """The message of a failure as it is recorded (for a fail-fast parallel step, its first
    branch's): cut to :data:`MAX_ERROR_TEXT`."""
    return capped(error_message(error))


def error_message(error: BaseException) -> str:
    """The whole message of a failure, as retry and catch matchers see it (only the record is
    cut)."""
    error = root_error(error)
    if isinstance(error, (FailStepError, RecordedError)):
        return error.cause
    return _text(error)


def _text(error: BaseException) -> str:
    """``str(error)``; an exception whose ``str()`` raises is described all the same (one
    raising a BaseException too, a ``GeneratorExit`` say: else it would escape the recording of
    the failure; only the process stopping goes on)."""
    try:
        return str(error)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        return f"<str() of this {type(error).__name__} raised {type(exc).__name__}>"


def describe_error(error: BaseException) -> str:
    """``Name: cause``: how an error is recorded in snapshots and events."""
    if isinstance(error, RecordedError):
        return str(error)
    while (alone := _alone_in_group(error)) is not None:
        error = alone  # as its name and cause are recorded (see wrapped_errors)
    name = error.error_name if isinstance(error, FailStepError) else type(error).__name__
    text = capped(error.cause if isinstance(error, FailStepError) else _text(error))
    return f"{name}: {text}" if text else name


#: Longest message a failure is recorded with, in characters (as AWS Step Functions caps an
#: error's cause): a record holds it more than once (its error, its cause, a catcher's output),
#: and a failure must always be storable, to be compensated and caught like any other.
MAX_ERROR_TEXT = 32_768


def capped(text: str, most: int = MAX_ERROR_TEXT) -> str:
    """``text``, or as much of it as fits in ``most`` characters with a note of how many more
    there were (the note included); lone surrogates (a file name that is not UTF-8, as ``os``
    decodes it) written as escapes, as storage holds UTF-8 only."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= most:
        return text
    note = "... ({} more characters cut)"
    # The count's digits are part of the length: a kept part a few characters shorter counts them.
    kept = most - len(note.format(len(text)))
    return text[:kept] + note.format(len(text) - kept)


def safe_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages about a user's values; one
    whose ``repr()`` raises is named by its type."""
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__} whose repr() raised>"
    return text[:limit]


def split_description(description: str) -> tuple[str, str]:
    """``(name, cause)`` of a description written by :func:`describe_error` (records written
    before names and causes were stored separately)."""
    name, sep, cause = description.partition(": ")
    if sep and name.isidentifier():
        return name, cause
    return (description, "") if description.isidentifier() else ("Error", description)
