"""A review of durable waiting (issue 14, SPEC §13): signals, receive steps and timers held;
the tests below failed until the commit that added this file (``unix_seconds`` now says a
moment is naive, for every caller to refuse).

Only one defect survived probing: a ``datetime`` whose ``tzinfo`` gives no UTC offset
(``tzinfo.utcoffset(dt)`` returns ``None``) is *naive* in Python's own definition ("A datetime
object d is aware if d.tzinfo is not None and d.tzinfo.utcoffset(d) does not return None;
otherwise d is naive", Python docs, datetime, "Determining if an Object is Aware or Naive").
trioflow's codec already treats such a value as naive (a signal payload carrying one reads back
with ``tzinfo=None``), but the timer and delayed-start checks look at ``tzinfo is None`` only, so
the value is not "refused clearly": a bare ``TypeError`` from ``datetime.timestamp()`` escapes
instead.
"""

from __future__ import annotations

from datetime import datetime, tzinfo

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter

from storages import engine_on, finish


class NoOffset(tzinfo):
    """A tzinfo that knows no offset: a datetime carrying it is naive (see the module docstring)."""

    def utcoffset(self, dt: datetime | None) -> None:
        return None

    def dst(self, dt: datetime | None) -> None:
        return None

    def tzname(self, dt: datetime | None) -> None:
        return None


def naive_with_tzinfo() -> datetime:
    moment = datetime(2030, 1, 1, tzinfo=NoOffset())
    assert moment.utcoffset() is None  # naive, by Python's definition
    return moment


def test_wait_until_a_naive_datetime_with_an_offsetless_tzinfo_is_refused_by_build() -> None:
    """Promise (docs/waiting.md, Timers): "`.wait(name, until=...)` waits until a moment: Unix
    seconds, an **aware** `datetime`, or a callable of ctx giving either (a naive `datetime` is
    refused: by `.wait()` itself when given directly ...)". A plain naive datetime is refused
    with ``DefinitionError: ... until must be an aware datetime (with a tzinfo)``.

    Reproduction: ``tf.workflow("w").wait("w", until=datetime(2030, 1, 1, tzinfo=NoOffset()))``.
    Expected: the same ``tf.DefinitionError`` as for ``tzinfo=None``.
    Actual: ``TypeError: can't subtract offset-naive and offset-aware datetimes`` escapes from
    ``unix_seconds`` (runtime/_durations.py:41), called by runtime/_builder.py:273 after a check
    of ``until.tzinfo is None`` only (runtime/_builder.py:271)."""
    with pytest.raises(tf.DefinitionError, match="aware"):
        tf.workflow("w").wait("w", until=naive_with_tzinfo()).build()


async def test_start_at_a_naive_datetime_with_an_offsetless_tzinfo_is_refused_with_invalid_argument(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Promise (docs/waiting.md, Delayed starts): "`start_at=` (an aware `datetime` or Unix
    seconds ...) ... `start` checks its arguments and the input before anything is stored"; a
    plain naive ``start_at`` raises ``InvalidArgumentError: start_at must be an aware datetime``.

    Reproduction: ``await engine.start("w", instance_id="z", start_at=datetime(2030, 1, 1,
    tzinfo=NoOffset()))``.
    Expected: ``tf.InvalidArgumentError`` (as for ``tzinfo=None``), nothing stored.
    Actual: ``TypeError: can't subtract offset-naive and offset-aware datetimes`` from
    runtime/_engine.py:718 (``unix_seconds``), past the ``start_at.tzinfo is None`` check at
    runtime/_engine.py:716."""
    wf = tf.workflow("w").pass_("p", end=True).build()
    async with engine_on(MemoryAdapter()) as engine:
        engine.register(wf)
        with pytest.raises(tf.InvalidArgumentError, match="aware"):
            await engine.start("w", instance_id="z", start_at=naive_with_tzinfo())
        assert await engine.get_instance("z") is None


async def test_wait_until_callable_giving_a_naive_datetime_with_an_offsetless_tzinfo_fails_clearly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Promise (docs/waiting.md, Timers): a naive `datetime` is refused "by failing the step when
    a callable gives one"; for ``tzinfo=None`` the step fails with ``InvalidArgumentError: step
    'w': until gave a naive datetime; give an aware one``.

    Reproduction: ``.wait("w", until=lambda ctx: datetime(2030, 1, 1, tzinfo=NoOffset()))``.
    Expected: the step fails with ``InvalidArgumentError`` naming the step and saying the datetime
    is naive.
    Actual: the step fails with ``TypeError`` / cause "can't subtract offset-naive and
    offset-aware datetimes" (actors/_wait.py:365 checks ``value.tzinfo is None`` only, then
    ``unix_seconds`` raises)."""
    wf = tf.workflow("w").wait("w", until=lambda ctx: naive_with_tzinfo()).build()
    async with engine_on(MemoryAdapter()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        done = await finish(engine, iid)
    assert done.status == "failed"
    assert done.error_name == "InvalidArgumentError", (done.error_name, done.cause)
    assert done.cause is not None and "naive" in done.cause and "'w'" in done.cause
