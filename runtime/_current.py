"""``tf.current_step()``: which step execution the calling code runs in, for idempotency keys
(what Temporal's ``activity.info()`` and DBOS's step ids give).

Each lane actor registers its :class:`~trioflow.WorkflowContext` under its own trio task while
it runs (the main line in the instance actor, each branch in its own actor, compensation in the
instance actor), and marks on it which step it is calling and which attempt: nothing is
allocated per step, and a :class:`StepInfo` is built only when asked for. A task a job spawns
finds its lane through its parent tasks; a plain ``def`` job in a worker thread through a
context variable set for the call in the thread's own context, which trio also hands to the
tasks it runs for that thread's calls back into trio (``trio.from_thread``). (Not set in the
instances' tasks: one there would keep three more objects alive per instance for the garbage
collector to walk.)
"""

from __future__ import annotations

import contextvars
import inspect
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._engine_arguments import refuses_unbound_arguments
from ._errors import TrioflowError
from ._lanes import execution_id, in_run, step_key

if TYPE_CHECKING:
    from ._context import WorkflowContext


class NotInStepError(TrioflowError, LookupError):
    """``current_step()`` was called outside a step's callable."""


@attrs.frozen(kw_only=True)
class StepInfo:
    """The step execution a callable runs in. ``execution_id`` is stable across retries and
    restarts of that execution (``"charge#1"``); ``attempt`` counts from 1 within it."""

    instance_id: str
    workflow_name: str
    step_name: str
    execution_id: str
    attempt: int
    #: Whether this call is the step's compensation (then ``execution_id`` names the
    #: execution being compensated).
    compensating: bool = False


#: The lane each running lane actor's task runs (tasks are unique, whatever the engine).
_lanes: dict[trio.lowlevel.Task, WorkflowContext] = {}


class ThreadCall:
    """A step's call of a plain ``def`` job in a worker thread, as the thread and the tasks trio
    runs for its calls back into trio (``trio.from_thread``) see it (see :func:`in_lane`)."""

    __slots__ = ("ctx", "host", "home", "root")

    def __init__(self, ctx: WorkflowContext, host: trio.lowlevel.Task) -> None:
        #: The call's own context (see ``WorkflowContext.for_thread_call``).
        self.ctx = ctx
        #: The task running the step, and the task of trio's init task it descends from (the
        #: program's main task, most often), and that init task (its trio run's): the tasks
        #: trio runs for the thread's calls back into trio are others of the same run (runs and
        #: tasks the call starts elsewhere carry the call in their context too, and are not
        #: the step's).
        self.host = host
        self.home = _top(host, lanes=False)
        self.root = trio.lowlevel.current_root_task()

    def end(self) -> None:
        """The step is done with the call (it returned, or its thread was given up): what the
        thread does from now on is not the step's."""
        self.ctx.end_thread_call()


#: In a worker thread running a step's plain ``def`` job, and in the tasks trio runs for that
#: thread's calls back into trio: the call. (trio runs those calls in system tasks of their own,
#: outside the step's task tree, since the thread may be abandoned; they carry the thread's
#: context, and so do the runs and tasks they start, which go by their own lanes first.)
_thread_call: contextvars.ContextVar[ThreadCall | None] = contextvars.ContextVar("trioflow_thread_call", default=None)


def swap_lane(ctx: WorkflowContext | None) -> WorkflowContext | None:
    """Make ``ctx`` the lane of the calling task (``None``: no lane), returning what it had:
    a run restores that when it ends (a step that runs ``execute_workflow`` nests a run in its
    own task), and a task that ends must leave no entry behind."""
    task = trio.lowlevel.current_task()
    previous = _lanes.pop(task, None)
    if ctx is not None:
        _lanes[task] = ctx
    return previous


def in_lane(ctx: WorkflowContext, fn: Callable[..., Any]) -> tuple[Callable[..., Any], ThreadCall]:
    """``fn`` for a worker thread, seeing ``ctx`` (its call's own context) as its lane, and
    the calling task as the one its calls back into trio are made for; and the call, to
    :meth:`~ThreadCall.end` once the step is done with it."""
    thread_call = ThreadCall(ctx, trio.lowlevel.current_task())

    def call(*args: Any) -> Any:
        # (In the thread's own copy of the context, for this call only: trio makes one per call.)
        _thread_call.set(thread_call)
        return call_plain(fn, *args)
    return call, thread_call


def keep_apart(nursery: trio.Nursery) -> None:
    """Make the tasks of ``nursery`` (at any depth) no part of a transaction the task that
    opened it, or any task above, holds: an engine's, whose instances are not their caller's
    (a transaction that task held would take in, and roll back, the driver writes of instances
    stored as done); they wait for it to end, as other tasks do. Nor are they a worker thread's
    call's, whatever context they were started with."""
    _APART.add(nursery)


#: Nurseries whose tasks, at any depth, take no part in the transactions of the tasks above them
#: (see :func:`keep_apart`).
_APART: weakref.WeakSet[trio.Nursery] = weakref.WeakSet()


def descends(task: trio.lowlevel.Task, ancestor: trio.lowlevel.Task) -> bool:
    """Whether ``task`` is ``ancestor`` or was spawned, at any depth, in a nursery that
    ``ancestor`` (or one of its descendants) opened, not through a nursery kept apart; a task
    trio runs for a worker thread's call back into trio counting, while the step's call is on,
    as spawned by the task running the step (once the step is done with the call, what its
    thread does is not the step's). A task spawned into a nursery opened elsewhere (an
    engine's, for instance actors) is not, wherever it was spawned from."""
    current: trio.lowlevel.Task | None = task
    while current is not None:
        if current is ancestor:
            return True
        nursery = current.parent_nursery
        if nursery is None or nursery in _APART:
            return False
        parent = nursery.parent_task
        if parent.parent_nursery is None:  # (``current`` is one of trio's init task's)
            call = current.context.get(_thread_call)
            current = call.host if call is not None and not call.ctx._call_over else None
        else:
            current = parent
    return False


def _outside_lanes(task: trio.lowlevel.Task, call: ThreadCall) -> trio.lowlevel.Task | None:
    """For a task trio runs for ``call``'s thread's calls back into trio, or one it spawned:
    that first task. ``None`` for any other: one of a lane (a run the call started, in the
    engine or with ``execute_workflow``, goes by its own lane), of a nursery kept apart (an
    engine's), of the tree the step runs in, or of another trio run."""
    if trio.lowlevel.current_root_task() is not call.root:
        return None
    top = _top(task)
    return None if top is None or top is call.home else top


def _top(task: trio.lowlevel.Task, *, lanes: bool = True) -> trio.lowlevel.Task | None:
    """The task of trio's init task that ``task`` descends from (the program's main task, or a
    system task); ``None`` if one on the way runs a lane or is in a nursery kept apart
    (``lanes``: those looked for)."""
    while True:
        if lanes and task in _lanes:
            return None
        nursery = task.parent_nursery
        if lanes and nursery in _APART:
            return None
        parent = None if nursery is None else nursery.parent_task
        if parent is None or parent.parent_nursery is None:  # (``parent`` is trio's init task)
            return task
        task = parent


def check_in_trio(what: str) -> None:
    """Raise a :class:`RuntimeError` saying so unless called in a trio task: trioflow runs on
    trio (an asyncio program gets trio's own "must be called from async context" otherwise)."""
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        raise RuntimeError(
            f"{what} must run in a trio program (trio.run, or a server on trio such as hypercorn with"
            " its trio worker); asyncio is not supported") from None


#: What a plain ``def`` job run inline (``threads=False``: the test engine, the crash explorer)
#: is told when it calls back into trio (``trio.from_thread``), which only a worker thread can.
INLINE_CALL_BACK = "a plain def job run inline (threads=False) cannot call back into trio"


def call_inline(fn: Callable[..., Any], *args: Any) -> Any:
    """:func:`call_plain` in trio's own thread, for an engine that runs plain jobs inline: trio's
    refusal of a call back into trio (its message tells of tokens and threads, not of the engine)
    says why it was refused and what to do instead."""
    try:
        return call_plain(fn, *args)
    except RuntimeError as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is None or tb.tb_frame.f_globals.get("__name__") != "trio._threads":
            raise
        raise RuntimeError(f"{INLINE_CALL_BACK} ({exc}): test it on open_test_engine(threads=True), or make"
                           " it an async def") from exc


def call_plain(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` for a plain function; one that hands back a coroutine (a lambda calling an
    async def) is refused with a :class:`TypeError` saying so, the coroutine closed unrun."""
    result = fn(*args)
    if inspect.iscoroutine(result):
        result.close()
        raise TypeError(f"{fn!r} is a plain function that returned a coroutine; make it an async def")
    return result


def lane_of_caller() -> WorkflowContext | None:
    """The lane context the calling code runs in (``None``: none): its task's, a parent
    task's (a task a job spawned), or a worker thread's (its call's, see ``in_lane``)."""
    try:
        task: trio.lowlevel.Task | None = trio.lowlevel.current_task()
    except RuntimeError:  # a worker thread: the job's own call's, if the engine runs it
        call = _thread_call.get()
        return None if call is None else call.ctx
    while task is not None:
        found = _lanes.get(task)
        if found is not None:
            return found
        nursery = task.parent_nursery
        task = nursery.parent_task if nursery is not None else None
    # A task trio runs for a worker thread's call back into trio (not one of a run it started,
    # in the program's own tree: its context carries the call too).
    call = _thread_call.get()
    if call is not None and _outside_lanes(trio.lowlevel.current_task(), call) is not None:
        return call.ctx
    return None


@refuses_unbound_arguments
def current_step() -> StepInfo:
    """The step execution the calling code runs in; :class:`NotInStepError` outside of one."""
    ctx = lane_of_caller()
    step = None if ctx is None else ctx._calling
    if ctx is None or step is None:
        raise NotInStepError(
            "trioflow.current_step() is only available inside a step's callable (a job, an execute or"
            " a compensate function) while the engine or execute_workflow runs it"
        )
    state, lane = ctx._state, ctx.lane
    execution = ctx._compensating
    if execution is None:  # the execution running now: not recorded until it ends
        execution = state.executions.get(step_key(lane, step), 0) + 1
    return StepInfo(
        instance_id=state.instance_id, workflow_name=state.workflow_name, step_name=step,
        execution_id=in_run(execution_id(lane, step, execution), state.runs), attempt=ctx._attempt,
        compensating=ctx._compensating is not None,
    )
