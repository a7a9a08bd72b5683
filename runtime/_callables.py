"""How trioflow tells the callables it is given apart: awaited (``async def``) or called.

A step's job may be either; a decision's callable (a choice condition, a catch or retry
predicate, a pass transform) must be a plain function, as the decision is made in one go: one
that gives an awaitable instead would count as true, or be the output.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ._errors import DefinitionError, TrioflowError, safe_repr


def is_async(fn: object) -> bool:
    """Whether ``fn`` is awaited (``async def``, or an object whose ``__call__`` is one) rather
    than run in a worker thread. What a decorator wraps is not asked: a plain ``def`` around an
    ``async def`` may run it to its end (``asyncio.run``, asgiref's ``async_to_sync``), and is
    called; one that hands its coroutine back is caught by :func:`plain_result` where a plain
    function is required. Asked once per definition or registration, never per call:
    ``inspect`` walks code flags each time, and a cache keyed by callables would keep them (and
    whatever their closures hold) alive, and fail on unhashable ones."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def generator_kind(fn: object) -> str | None:
    """What kind of generator function ``fn`` is (``None``: none). A step's job that ``yield``s
    hands back a generator rather than its output: a mistake that would only show as an output
    that cannot be stored, so it is refused where the job is given."""
    for candidate in (fn, getattr(fn, "__call__", None)):
        if inspect.isasyncgenfunction(candidate):
            return "an async generator function"
        if inspect.isgeneratorfunction(candidate):
            return "a generator function"
    return None


def not_plain(fn: object) -> str | None:
    """What keeps ``fn`` from being a plain function whose answer counts (``None``: nothing):
    called and not awaited nor iterated, an ``async def`` gives a coroutine and a generator
    function a generator, both true (a condition or predicate that always holds) and neither
    the answer (a cause, an output, a time)."""
    return "an async function" if is_async(fn) else generator_kind(fn)


def refusal(fn: Callable[..., Any], arguments: tuple[str, ...]) -> str | None:
    """``fn`` as it reads (its name and signature) if it cannot be called with ``arguments``
    (``None``: it can, or it has no signature to read, as some builtins)."""
    try:
        # The callable as called: a decorator's wrapper (``functools.wraps``) may supply some
        # of the arguments of the function it wraps itself.
        signature = inspect.signature(fn, follow_wrapped=False)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*arguments)
    except TypeError:
        return f"{getattr(fn, '__qualname__', None) or safe_repr(fn)}{signature}"
    return None


def check_arguments(
    label: str, what: str, fn: object, arguments: tuple[str, ...], error: type[TrioflowError] = DefinitionError,
) -> None:
    """Refuse a callable that cannot take the arguments it will be called with: the mistake
    would show only when it runs (a compensation, when a later step fails: the work it should
    undo stays done). Callables without a signature to read (some builtins) pass. ``error``:
    what is raised (a definition's callables: :class:`DefinitionError`)."""
    if not callable(fn):
        return  # a job name: checked where it meets its job (_jobs.check_job_calls)
    refused = refusal(fn, arguments)
    if refused is not None:
        raise error(
            f"{label}: {what} is called as {what}({', '.join(arguments)}), but {refused} cannot take"
            f" {len(arguments)} argument{'s' if len(arguments) > 1 else ''}")


def plain_result(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` for a callable that must be a plain function: one that gives an awaitable
    or a generator (an ``async def`` or a generator function behind a wrapper the build-time
    check cannot see through) raises ``TypeError`` rather than have it taken for the answer."""
    result = fn(*args)
    if inspect.isawaitable(result) or inspect.isgenerator(result) or inspect.isasyncgen(result):
        close = getattr(result, "close", None)  # (an async generator not started needs no closing)
        if close is not None:
            close()  # never awaited: closed, so that no "never awaited" warning follows
        what = "an awaitable" if inspect.isawaitable(result) else "a generator"
        raise TypeError(f"{fn!r} gave {what}; it must be a plain function (not async def nor a generator)")
    return result
