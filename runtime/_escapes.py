"""The exceptions that go on past trioflow's handling of user code: a trio cancellation of a
scope around it (its step's, its instance's, the engine closing) and KeyboardInterrupt or
SystemExit (the process stopping). Anything else user code raises, BaseExceptions included, is
that code's failure: a ``trio.Cancelled`` that nothing around it cancelled too (let out of a
cancel scope of its own), which would otherwise stop the instance, or the engine, as a
shutdown does."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import NoReturn

import trio

log = logging.getLogger("trioflow")


def stops_the_process(exc: BaseException) -> bool:
    """Whether ``exc`` is (or a group holding) KeyboardInterrupt or SystemExit: what user code
    raises that trioflow lets go on, rather than take for that code's failure."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split((KeyboardInterrupt, SystemExit))[0] is not None
    return isinstance(exc, (KeyboardInterrupt, SystemExit))


def first_stop(leaves: Iterable[BaseException]) -> BaseException | None:
    """The first process stop among ``leaves`` (exceptions, not groups), or ``None``. Only one
    can go on, and it decides the process's exit status: any other (two branches' ``sys.exit()``
    and Ctrl+C in the same instant) is logged, rather than dropped without a trace."""
    stops = [exc for exc in leaves if isinstance(exc, (KeyboardInterrupt, SystemExit))]
    for other in stops[1:]:
        log.warning("%r stopped the process in the same instant as %r, which goes on; this one is dropped",
                    other, stops[0])
    return stops[0] if stops else None


def cancels(exc: BaseException) -> bool:
    """Whether ``exc`` is (or a group holding) a trio cancellation."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[0] is not None
    return isinstance(exc, trio.Cancelled)


def goes_on(exc: BaseException) -> bool:
    """Whether ``exc``, raised by user code, goes on rather than count as that code's failure
    (in the task, and inside the scopes, that called that code)."""
    return stops_the_process(exc) or (cancels(exc) and stray_cancel() is None)


def stray_cancel() -> RuntimeError | None:
    """The failure a ``trio.Cancelled`` out of user code is when nothing around it was
    cancelled (it let one out of a cancel scope of its own); ``None`` when something was."""
    if trio.current_effective_deadline() == -math.inf:
        return None
    return RuntimeError("trio.Cancelled escaped, though nothing cancelled its step, instance or engine")


def failure_of(exc: BaseException) -> BaseException:
    """``exc``, raised by user code (a condition, a mapper), as that code's failure: returned,
    to fail its step with (a stray cancellation as :func:`stray_cancel` says); raised again if
    it goes on (see :func:`goes_on`)."""
    if goes_on(exc):
        raise exc
    return (stray_cancel() or exc) if cancels(exc) else exc


def raise_keeping_context(exc: BaseException) -> NoReturn:
    """Raise ``exc`` with the ``__context__`` it has. Raised where another exception is being
    handled (inside an ``async with`` block's exit, say), Python would make that one its context:
    a step's ``except KeyError: sys.exit()`` would read as raised while handling a trio
    cancellation, its KeyError gone from the traceback."""
    context = exc.__context__
    try:
        raise exc
    except BaseException:
        exc.__context__ = context
        raise  # (a bare raise sets no context)
