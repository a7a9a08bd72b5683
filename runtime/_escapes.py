"""The exceptions that go on past trioflow's handling of user code: a trio cancellation (the
code's own scope, the engine closing) and KeyboardInterrupt or SystemExit (the process
stopping). Anything else user code raises, BaseExceptions included, is that code's failure."""

from __future__ import annotations

import trio


def stops_the_process(exc: BaseException) -> bool:
    """Whether ``exc`` is (or a group holding) KeyboardInterrupt or SystemExit: what user code
    raises that trioflow lets go on, rather than take for that code's failure."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split((KeyboardInterrupt, SystemExit))[0] is not None
    return isinstance(exc, (KeyboardInterrupt, SystemExit))


def cancels(exc: BaseException) -> bool:
    """Whether ``exc`` is (or a group holding) a trio cancellation."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[0] is not None
    return isinstance(exc, trio.Cancelled)


def goes_on(exc: BaseException) -> bool:
    """Whether ``exc``, raised by user code, goes on rather than count as that code's failure."""
    return cancels(exc) or stops_the_process(exc)


def failure_of(exc: BaseException) -> BaseException:
    """``exc``, raised by user code (a condition, a mapper), as that code's failure: returned,
    to fail its step with; raised again if it goes on (see :func:`goes_on`)."""
    if goes_on(exc):
        raise exc
    return exc
