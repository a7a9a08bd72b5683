"""trioflow's exception hierarchy: one root, flat classes, builtin mix-ins where they fit.

Every error a caller can get from trioflow derives from :class:`TrioflowError`, so a service can
catch "anything the orchestrator said" in one place, while the builtin mix-ins keep ordinary
``except ValueError`` / ``except LookupError`` code working.
"""

from __future__ import annotations

from collections.abc import Sequence


class TrioflowError(Exception):
    """Root of every error trioflow raises on purpose."""


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
    """``start(..., instance_id=X)`` where X already belongs to another workflow (running or not)."""


class EngineClosedError(TrioflowError, RuntimeError):
    """The engine was used after its ``async with`` block ended."""


class InstanceNotLiveError(TrioflowError, RuntimeError):
    """``wait()`` on an instance that is running in storage but not in this engine."""


class StepError(TrioflowError):
    """Base of the errors that describe why one step failed."""


class StepTimeoutError(StepError, TimeoutError):
    """One attempt of a step ran longer than the step's ``timeout``."""

    def __init__(self, step_name: str, timeout: float) -> None:
        super().__init__(f"step {step_name!r} timed out after {timeout:g} s")
        self.step_name = step_name
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


class BranchError(TrioflowError):
    """A step inside a parallel branch failed; names the branch and the step."""

    def __init__(self, branch_name: str, step_name: str, error: BaseException) -> None:
        super().__init__(f"branch {branch_name!r}, step {step_name!r}: {describe_error(error)}")
        self.branch_name = branch_name
        self.step_name = step_name
        self.error = error


class ParallelError(ExceptionGroup[BranchError], TrioflowError):
    """A ``wait-all`` parallel step in which one or more branches failed: all their errors."""

    step_name: str

    def __new__(cls, step_name: str, errors: Sequence[BranchError]) -> ParallelError:
        failed = ", ".join(repr(e.branch_name) for e in errors)
        self = super().__new__(cls, f"parallel step {step_name!r}: branches {failed} failed", errors)
        self.step_name = step_name
        return self

    def __init__(self, step_name: str, errors: Sequence[BranchError]) -> None:
        failed = ", ".join(repr(e.branch_name) for e in errors)
        super().__init__(f"parallel step {step_name!r}: branches {failed} failed", errors)

    def derive(self, excs: Sequence[BranchError]) -> ParallelError:  # type: ignore[override]
        return ParallelError(self.step_name, excs)


class RecordedError(TrioflowError):
    """An error known only as it was recorded (a step that failed for good before a restart):
    described exactly as it was."""


def describe_error(error: BaseException) -> str:
    """``TypeName: message``: how an error is recorded in snapshots and events."""
    text = str(error)
    if isinstance(error, RecordedError):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
