"""The checks of what callers hand trioflow (arguments that do not bind to a public call,
``open_engine``'s options, instance ids, listings, a start under an id already taken): each
raises trioflow's own error naming what was wrong and what to pass instead, before anything is
stored."""

from __future__ import annotations

import functools
import inspect
import os
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

from ._durations import Seconds, in_range, seconds
from ._errors import InstanceIdConflictError, InvalidArgumentError, safe_repr
from ._lanes import valid_text
from ._snapshot import STATUSES, InstanceState, WorkflowInstance

if TYPE_CHECKING:
    from ._codec import StoredHead


_P = ParamSpec("_P")
_R = TypeVar("_R")


@overload
def refuses_unbound_arguments(function: Callable[_P, _R], /) -> Callable[_P, _R]: ...
@overload
def refuses_unbound_arguments(
    *, called: str | None = None, frameless: bool = False,
) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]: ...


def refuses_unbound_arguments(
    function: Callable[_P, _R] | None = None, /, *, called: str | None = None, frameless: bool = False,
) -> Callable[_P, _R] | Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """``function`` (a function, a method, an ``async def``, a context-manager factory made by
    ``(async)contextmanager``) whose arguments that do not bind (a misspelt keyword, a required
    one left out, one too many) raise :class:`InvalidArgumentError` naming them and the nearest
    name it takes, rather than Python's ``TypeError``: trioflow's own error, as for every other
    bad argument. The message calls it by its name (a class's for ``__init__``), or ``called``
    (``@refuses_unbound_arguments(called="workflow")``, for a ``__call__``).

    Nothing is checked before the call: Python binds the arguments before the body runs, so
    when a call raises ``TypeError`` and they do not bind, the body never ran (nothing half
    done, nothing stored), and that ``TypeError`` was the binding's; one the body raised (its
    arguments bound) goes on as it was. The wrapper costs a call's frame (about 0.25 µs); the
    message is worked out only once a call has failed. An ``async def`` stays a coroutine
    function, refusing as the call is awaited, as its other bad arguments are; a context-manager
    factory refuses as it is called (it binds its generator's arguments then). Its signature
    stays the function's, for type checkers (which flag such a call where it is written) and
    for ``inspect``.

    ``frameless=True``, for an ``async def`` whose callers stay in it for long (``wait()``):
    the wrapper is a plain function handing back the coroutine (or one that raises the refusal
    when awaited), so that no frame of its own is held while the caller waits. Every instance
    in flight usually has a caller waiting so, and a frame more each is an object more for the
    cyclic collector: it cost a tenth of engine + MemoryAdapter's throughput. Such a wrapper is
    a coroutine function to ``inspect.iscoroutinefunction`` from Python 3.12 on (marked so), not
    on 3.11."""
    if function is None:
        def decorate(function: Callable[_P, _R]) -> Callable[_P, _R]:
            return _refusing(function, called or _called_as(function), frameless)

        return decorate
    return _refusing(function, _called_as(function), frameless)


def _refusing(function: Callable[_P, _R], name: str, frameless: bool = False) -> Callable[_P, _R]:
    """:func:`refuses_unbound_arguments`, calling ``function`` ``name`` in its messages. (Its
    signature is worked out once a call has failed, not as the module defining it is imported:
    some seventy functions are wrapped, and ``import trioflow`` would take a tenth longer.)"""

    def refusal(args: tuple[Any, ...], kwargs: dict[str, Any]) -> InvalidArgumentError | None:
        signature = inspect.signature(function)
        # A method's ``self`` is given, not the caller's to name: left out of what the message counts.
        skip = 1 if next(iter(signature.parameters), None) == "self" else 0
        # A constructor is named by the class it was called on (a user's subclass), not its own.
        constructor = skip and getattr(function, "__name__", "") == "__init__"
        try:
            signature.bind(*args, **kwargs)
        except TypeError as unbound:
            called = type(args[0]).__name__ if constructor and args else name
            if skip and not args and "self" in kwargs:  # (a method called unbound, ``self=`` by keyword)
                kwargs = {key: value for key, value in kwargs.items() if key != "self"}
            return InvalidArgumentError(_unbound(called, signature, args[skip:], kwargs, skip) or f"{called}(): {unbound}")
        return None

    if inspect.iscoroutinefunction(function):
        coroutine_function = function
        if frameless:
            @functools.wraps(function)
            def handed_back(*args: Any, **kwargs: Any) -> Any:
                try:
                    return coroutine_function(*args, **kwargs)
                except TypeError:
                    refused = refusal(args, kwargs)
                    if refused is None:
                        raise
                    raising = cast("types.CoroutineType[Any, Any, Any]", _raising(refused))
                    # (Named as the call's: "coroutine 'Engine.wait' was never awaited".)
                    raising.__name__, raising.__qualname__ = coroutine_function.__name__, coroutine_function.__qualname__
                    return raising

            mark = getattr(inspect, "markcoroutinefunction", None)  # (Python 3.12 on)
            return cast(Callable[_P, _R], handed_back if mark is None else mark(handed_back))

        @functools.wraps(function)
        async def checked_when_awaited(*args: Any, **kwargs: Any) -> Any:
            try:
                coroutine = coroutine_function(*args, **kwargs)
            except TypeError:
                refused = refusal(args, kwargs)
                if refused is None:
                    raise
                raise refused from None
            return await coroutine

        return cast(Callable[_P, _R], checked_when_awaited)

    @functools.wraps(function)
    def checked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return function(*args, **kwargs)
        except TypeError:
            refused = refusal(args, kwargs)
            if refused is None:
                raise  # (the body's own: its arguments bound)
            raise refused from None

    return checked


async def _raising(error: InvalidArgumentError) -> Any:
    """A frameless wrapper's refusal, raised as the call is awaited (as its other bad arguments are)."""
    raise error from None


def _called_as(function: Callable[..., Any]) -> str:
    """What a message calls ``function``: its name, its class's for an ``__init__``."""
    name: str = getattr(function, "__name__", "call")
    if name == "__init__":
        return getattr(function, "__qualname__", name).split(".")[-2]
    return name


def nearest(key: str, names: Sequence[str]) -> str | None:
    """The one of ``names`` that a misspelt ``key`` most likely meant, if one is near."""
    import difflib  # (here, not at the top: only a refused call needs it, and it costs import trioflow 3 %)

    near = difflib.get_close_matches(key, names, n=1)
    return near[0] if near else None


def _no_keyword(key: str, names: Sequence[str], star: str | None) -> str:
    if key == star:
        return f"no keyword {key!r} (*{star} are given positionally)"
    near = nearest(key, names)
    return f"no keyword {key!r}" + (f" (did you mean {near}=?)" if near else "")


def _unbound(name: str, signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any], skip: int) -> str:
    """What is wrong with ``args`` and ``kwargs`` for a function of ``signature`` (less its first
    ``skip`` parameters, given already: a method's ``self``): each keyword it does not take (with
    the nearest it does), a required argument missing, one given twice, positional ones too
    many. Empty if none of these is it (a keyword given for a positional-only parameter)."""
    params = list(signature.parameters.values())[skip:]
    names = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    any_keyword = any(p.kind is p.VAR_KEYWORD for p in params)
    star = next((p.name for p in params if p.kind is p.VAR_POSITIONAL), None)
    any_positional = star is not None
    wrong = [] if any_keyword else [_no_keyword(key, names, star) for key in kwargs if key not in names]
    given = {*positional[:len(args)], *kwargs}
    wrong += [f"{p.name} is missing" for p in params
              if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in given]
    wrong += [f"{key} is given twice (positionally and as {key}=)" for key in positional[:len(args)] if key in kwargs]
    shown = [f"*{p.name}" if p.kind is p.VAR_POSITIONAL else p.name for p in params if p.kind is not p.VAR_KEYWORD]
    takes = f"; it takes {', '.join(shown)}" if wrong and shown else ""
    if len(args) > len(positional) and not any_positional:
        by_keyword = [n for n in names if n not in positional]
        wrong.append(f"{len(args)} argument{'s' if len(args) > 1 else ''} given positionally, where it takes"
                     + (f" {len(positional)} ({', '.join(positional)})" if positional else " none")
                     + (f": pass {', '.join(f'{n}=' for n in by_keyword)} by keyword" if by_keyword
                        else ": pass them by keyword" if any_keyword else ""))
    return f"{name}(): {'; '.join(wrong)}{takes}" if wrong else ""


def duration(value: Seconds, name: str) -> float:
    """A duration argument in seconds, or :class:`InvalidArgumentError` naming it."""
    number = seconds(value)
    if not in_range(number):
        raise InvalidArgumentError(f"{name} must be a finite number of seconds >= 0 (or a timedelta), got {value!r}")
    return float(number)


def check_switch(value: object, name: str) -> None:
    """A switch argument (``resume``, ``replace``...): ``True`` or ``False``, nothing merely
    truthy (``"no"`` from a configuration file is), or :class:`InvalidArgumentError` naming it."""
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{name} takes True or False, got {safe_repr(value)}")


def check_adapter(adapter: object) -> None:
    """``open_engine``'s ``adapter``: an adapter object (made, not its class), or
    :class:`InvalidArgumentError` saying what to pass."""
    if adapter is None:
        return
    if isinstance(adapter, type):
        raise InvalidArgumentError(
            f"adapter must be an adapter object, got the class {adapter.__name__}: make one, as in"
            f" {adapter.__name__}(...)")
    missing = [name for name in ("open", "close", "create", "checkpoint", "load") if not callable(getattr(adapter, name, None))]
    if missing:
        hint = ": for a SQLite file, pass tf.adapters.SQLiteAdapter(path)" if isinstance(adapter, (str, os.PathLike)) else ""
        raise InvalidArgumentError(
            f"adapter must be a persistence adapter (it has no {', '.join(missing)}), got {safe_repr(adapter)}{hint}")


def check_driver_apart(driver: object, adapter: object, workflow_name: str) -> None:
    """Refuse a transactional workflow whose driver works on the adapter's own SQLite file:
    its run holds SQLite's one write lock from its first step to its end, and the engine could
    store nothing meanwhile (every other ``start`` and checkpoint would fail, after the busy
    timeout, with ``DatabaseUnavailableError``). Files are compared as ``path`` attributes
    (``SQLiteDriver`` and ``SQLiteAdapter`` have one; a driver handed a connection has none)."""
    theirs, mine = getattr(driver, "path", None), getattr(adapter, "path", None)
    if not isinstance(theirs, (str, os.PathLike)) or not isinstance(mine, (str, os.PathLike)) \
            or ":memory:" in (os.fspath(theirs), os.fspath(mine)):
        return
    try:
        same = os.path.samefile(theirs, mine)
    except OSError:  # (one not made yet)
        same = os.path.realpath(theirs) == os.path.realpath(mine)
    if same:
        raise InvalidArgumentError(
            f"workflow {workflow_name!r} is transactional, and the engine's driver works on its storage's own file"
            f" {os.fspath(mine)!r}: the run would hold SQLite's write lock from its first step to its end, and the"
            " engine could store nothing meanwhile; keep your tables in another file than the engine's")


def check_instance_id(instance_id: object) -> None:
    """An instance id as the engine's methods take it, or :class:`InvalidArgumentError` saying
    what to pass instead."""
    if isinstance(instance_id, str):
        if valid_text(instance_id):
            return
        # (A lone surrogate, from a file name decoded with surrogateescape: no storage takes it.)
        raise InvalidArgumentError(f"an instance id must be valid text, got {instance_id!r}")
    from ._definition import WorkflowDefinition  # (see check_listing)
    if isinstance(instance_id, WorkflowInstance):
        hint = f": pass its id, {instance_id.id!r}"
    elif isinstance(instance_id, WorkflowDefinition):
        hint = ": that is a workflow definition; pass the id start() returned"
    elif inspect.iscoroutine(instance_id):
        hint = f", got {safe_repr(instance_id)}: await it first (`await engine.start(...)` gives the id)"
    else:
        hint = f", got {safe_repr(instance_id)}"
    raise InvalidArgumentError(f"an instance id must be a string{hint}")


def check_given_instance_id(instance_id: object) -> None:
    """An instance id a caller gives a new instance (``start``, ``execute_workflow``), or
    :class:`InvalidArgumentError`: a non-empty string of valid text."""
    if not isinstance(instance_id, str) or not instance_id or not valid_text(instance_id):
        raise InvalidArgumentError(
            f"instance_id must be a non-empty string of valid text, got {safe_repr(instance_id)}")


def check_listing(workflow_name: object, status: object, limit: object, after: object, order: object) -> None:
    """The arguments of ``get_instances``, or :class:`InvalidArgumentError` naming the one at fault."""
    if workflow_name is not None and not isinstance(workflow_name, str):
        # (Imported here: Retry, the builders and the definitions' own classes take
        # refuses_unbound_arguments from this module as _definition is being imported.)
        from ._definition import WorkflowDefinition
        if isinstance(workflow_name, WorkflowDefinition):
            raise InvalidArgumentError(f"get_instances() takes a workflow's name: pass {workflow_name.name!r}")
    if workflow_name is not None and (not isinstance(workflow_name, str) or not valid_text(workflow_name)):
        raise InvalidArgumentError(f"workflow_name must be a workflow name or None, got {safe_repr(workflow_name)}")
    if status is not None and (not isinstance(status, str) or status not in STATUSES):
        raise InvalidArgumentError(f"status must be one of {', '.join(sorted(STATUSES))} or None, got {status!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit < 1 << 63):
        raise InvalidArgumentError(f"limit must be an int >= 1 (below 2**63) or None, got {limit!r}")
    if after is not None and not isinstance(after, WorkflowInstance) and (
            not isinstance(after, str) or not after or not valid_text(after)):
        raise InvalidArgumentError(
            f"after must be the last instance of the previous page, or its id, got {after!r}")
    if order not in ("oldest", "newest"):
        raise InvalidArgumentError(f"order must be 'oldest' or 'newest', got {order!r}")


def check_same_workflow(instance_id: str, stored: str, asked: str) -> None:
    if stored != asked:
        raise InstanceIdConflictError(f"instance id {instance_id!r} already belongs to workflow {stored!r}")


def check_same_start(
    instance_id: str, state: InstanceState | StoredHead, workflow_name: str, input: Any,
    parent: InstanceState | None = None,
) -> None:
    """A ``start`` with the id of an existing instance returns it only if it asks for the same
    workflow with the same input (as Step Functions does for an execution name). A child step
    (``parent``) finding its child takes it whatever its input and workflow (the child it
    started before a restart, whose input a callable of ctx may now work out otherwise, and
    whose workflow a release may now name otherwise: the execution keeps the child it
    started), but only if it is that parent's child: not an instance a caller started under
    that id. One that continued as new keeps no more its first run's input to compare: the same
    workflow is enough (a start retried after its answer was lost gets it, as it would have).
    (``state``: the stored instance's state, or the head of its row, which says as much.)"""
    if parent is not None:
        if state.parent_id != parent.instance_id:
            raise not_the_child(instance_id, parent)
        return
    check_same_workflow(instance_id, state.workflow_name, workflow_name)
    if state.runs:
        return
    from ._codec import same_value  # (loaded on first use: the job registry's checks, here, import fast)
    if not same_value(state.input, input):
        raise InstanceIdConflictError(
            f"instance id {instance_id!r} already belongs to an instance of {workflow_name!r} with another input;"
            " start with the same input to get that instance, or under another id"
        )


def not_the_child(child_id: str, parent: InstanceState) -> InstanceIdConflictError:
    return InstanceIdConflictError(
        f"instance id {child_id!r}, which a child step of instance {parent.instance_id!r} gives its child, belongs"
        " to an instance that is not that instance's child (one a caller started under that id, or the child of"
        " an earlier instance with the same id, since deleted); delete it, or start the parent under another id")
