"""Retry policy: how often a step is tried and how long to sleep between attempts."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import attrs
import trio

from ._durations import Seconds, in_range, seconds
from ._engine_arguments import refuses_unbound_arguments
from ._errors import DefinitionError
from ._matching import ErrorMatcher, matcher_tuple, matches

#: What ``retry_on`` accepts: exception types, error names or message fragments, predicates,
#: :data:`trioflow.ALL`, or a mix (see :mod:`trioflow._matching`).
RetryOn = ErrorMatcher


def _positive_int(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    # ``True`` is an ``int`` to Python, never a count of attempts to a reader.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DefinitionError(f"Retry.{attribute.name} must be an int >= 1, got {value!r}")


def _finite_at_least(minimum: float) -> Callable[[object, attrs.Attribute[float], float], None]:
    """A validator for a finite number (not a bool) of at least ``minimum``.

    NaN compares false with everything, so "is it below the minimum?" would wave it through;
    the test is written as "is it in range?" instead. Infinities are refused too: an infinite
    interval or backoff rate makes delays infinite (or NaN: ``0 * inf``), and an infinite cap
    leaves nothing to stop the delays growing to infinity.
    """

    def check(_: object, attribute: attrs.Attribute[float], value: float) -> None:
        if not in_range(value, minimum):
            raise DefinitionError(f"Retry.{attribute.name} must be a finite number >= {minimum:g}, got {value!r}")

    return check


def _fraction(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise DefinitionError(f"Retry.{attribute.name} must be a number from 0 to 1, got {value!r}")


#: Draws each jittered delay: a generator of its own, so that neither a program's seeding of
#: ``random`` nor hypothesis's management of it makes every instance's delays the same.
_jitter_source = random.Random()

#: The generator of a trio run whose test engine seeded one (see :func:`seed_jitter`).
_seeded_jitter: trio.lowlevel.RunVar[random.Random] = trio.lowlevel.RunVar("trioflow_seeded_jitter")

#: The seed of the testing kit's engines: every one draws the same jitter, run after run.
TEST_JITTER_SEED = 0


def seed_jitter(seed: int = TEST_JITTER_SEED) -> None:
    """Draw the jitter of the current trio run's retries from a generator seeded with ``seed``,
    from its first draw: two identical runs then retry at the same (virtual) times. For the
    testing kit, whose runs promise that; an engine's own stays unseeded, so that instances of
    programs started alike still spread their retries. (Seeding by instance id instead would
    not do: ids are random, so a test's two runs would still draw apart.)"""
    _seeded_jitter.set(random.Random(seed))


def _jitter_draw() -> float:
    """A share from 0 to 1, from the run's seeded generator if it has one."""
    try:
        source = _seeded_jitter.get()
    except (LookupError, RuntimeError):  # (none seeded, or outside a trio run: a policy asked directly)
        source = _jitter_source
    return source.random()


def _retry_on_tuple(value: object) -> tuple[ErrorMatcher, ...] | None:
    if value is None:
        return None
    items = matcher_tuple(value, "Retry.retry_on")
    if not items:
        raise DefinitionError("Retry.retry_on must name at least one error (None retries every error;"
                              " max_attempts=1 retries none)")
    return items


@attrs.frozen(kw_only=True, init=False)  # (its own __init__ takes positional arguments too)
class Retry:
    """How a step is retried. Defaults follow the seeds: 3 attempts, 1 s, doubling, capped at 30 s.

    ``max_attempts`` counts the first try; ``interval`` and ``max_interval`` are seconds (or
    ``timedelta``). The delay before attempt ``n + 1`` is
    ``min(interval * backoff_rate ** (n - 1), max_interval)``, less a random share of up to
    ``jitter`` of it (``0``, the default: none; ``1``: anywhere from 0 to the full delay, Step
    Functions' ``FULL``), so that many instances failing on one dependency at once do not all
    retry at the same moment. ``retry_on`` restricts which errors
    are retried (``None``: all). Its items are checked in a fixed precedence: exception types
    first (``isinstance``), then strings (a match when the string is the error's name or occurs
    in its message), then :data:`trioflow.ALL`, then predicates (``predicate(error) -> bool``).

    An invalid policy raises :class:`~trioflow.DefinitionError` naming the field: the numbers
    must be finite, and ``interval`` may not exceed ``max_interval`` (default 30 s), since the
    delay is capped at ``max_interval``, so such an interval would never be waited in full.
    """

    max_attempts: int = attrs.field(default=3, validator=_positive_int)
    interval: float = attrs.field(default=1.0, converter=seconds, validator=_finite_at_least(0))
    backoff_rate: float = attrs.field(default=2.0, validator=_finite_at_least(1))
    max_interval: float = attrs.field(default=30.0, converter=seconds, validator=_finite_at_least(0))
    retry_on: tuple[RetryOn, ...] | None = attrs.field(default=None, converter=_retry_on_tuple)
    jitter: float = attrs.field(default=0.0, validator=_fraction)

    @refuses_unbound_arguments
    def __init__(
        self,
        max_attempts: int = 3,
        interval: Seconds = 1.0,
        backoff_rate: float = 2.0,
        max_interval: Seconds = 30.0,
        retry_on: RetryOn | Sequence[RetryOn] | None = None,
        *,
        jitter: float = 0.0,
    ) -> None:
        # Positional arguments are allowed here (``Retry(5)``) because it reads naturally.
        self.__attrs_init__(
            max_attempts=max_attempts,
            interval=interval,
            backoff_rate=backoff_rate,
            max_interval=max_interval,
            retry_on=retry_on,
            jitter=jitter,
        )

    def __attrs_post_init__(self) -> None:
        """Checks across fields; attrs runs it after the per-field validators."""
        if self.interval > self.max_interval:
            raise DefinitionError(
                f"Retry.interval ({self.interval!r}) is greater than Retry.max_interval ({self.max_interval!r});"
                " every delay is capped at max_interval, so raise max_interval or lower interval"
            )

    def delay(self, attempt: int) -> float:
        """Seconds to sleep after failed attempt number ``attempt`` (1-based), before jitter:
        the longest the sleep can be."""
        try:
            grown = self.interval * self.backoff_rate ** (attempt - 1)
        except OverflowError:
            # ``backoff_rate ** n`` outgrew floats (a long-polling policy, attempt ~1000 at rate
            # 2): any interval but 0 is then far past the cap, which is finite.
            grown = self.max_interval if self.interval else 0.0
        return float(min(grown, self.max_interval))

    def retries(self, error: BaseException) -> bool:
        """Whether ``error`` is one this policy retries (ignoring the attempt count)."""
        return self.retry_on is None or matches(self.retry_on, error)

    def next_delay(self, attempt: int, error: BaseException) -> float | None:
        """The sleep before the next attempt, or ``None`` when the step has failed for good.

        ``None`` after the last attempt: there is never a sleep that no attempt follows.
        """
        if attempt >= self.max_attempts or not self.retries(error):
            return None
        delay = self.delay(attempt)
        if self.jitter:
            # Drawn once, as the attempt fails: an engine stores the next attempt's time, so a
            # restart keeps it rather than draw again.
            delay -= delay * self.jitter * _jitter_draw()
        return delay


#: The policy of a step that has none of its own and whose workflow sets no default.
NO_RETRY = Retry(max_attempts=1)
