"""A review of f46351d and 8d9fa80: SQLite's waker queries name the wake index (INDEXED BY), a
small flat dict is handed to a step as a ``dict()`` copy rather than a msgpack round trip, and
the waker looks at due instances again straight after a full look that woke some.

What a user relies on, checked here on both shipped adapters where storage matters:

- a step is handed (and ``start`` keeps) exactly what a restarted run would read back from
  storage, and what storage cannot hold is refused as before;
- thousands of timers due together (more than ``WAKE_BATCH``), among instances waiting far in
  the future, each fire once and on time, also across a restart on a SQLite file, also while
  the waker cannot resume some due rows or ``due()`` fails now and then;
- a SQLite file from any earlier schema has the wake index the waker's queries name.

Every test runs on trio's MockClock; nothing sleeps in real time.
"""

from __future__ import annotations

import enum
import math
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
import trioflow as tf
import trioflow._engine as engine_module
from trioflow._codec import _checked, as_stored, check_encodable
from trioflow.adapters import Adapter, MemoryAdapter, SQLiteAdapter
from trioflow.testing import virtual_wall_clock

from storages import engine_on, finish, returning

#: Slack on virtual-time measurements: SQLite commits take real time, and virtual time runs at
#: real speed meanwhile (as in tests/test_waiting.py); every timer here is hundreds of seconds.
SLACK = 3.0
FIXTURES = Path(__file__).with_name("fixtures")


# -- the flat-dict copy: the same as the round trip through storage ---------------------------------


class _IntEnum(enum.IntEnum):
    ONE = 1


class _StrEnum(str, enum.Enum):
    A = "a"


class _Str(str):
    pass


class _Float(float):
    pass


class _Int(int):
    pass


class _Dict(dict):  # type: ignore[type-arg]
    pass


_VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1,
    0.0, -0.0, 1.5, math.inf, -math.inf, 1e308, 5e-324,
    "", "abc", "\x00", "\x7f", "é", "\u20ac", "\ud800", "x" * 4096, "x" * 4097,
    _IntEnum.ONE, _StrEnum.A, _Str("s"), _Float(2.5), _Int(7),
    b"", b"x", bytearray(b"x"), [1], (1, 2), {"n": 1}, {1, 2},
]
_KEYS: list[Any] = ["k", "", "é", "\ud800", 1, 2**64, True, None, 1.5, b"k", (1,), _Str("k"), _StrEnum.A, _IntEnum.ONE]


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "value", call()
    except Exception as exc:  # noqa: BLE001 - the kind of error is what is compared
        return "error", type(exc)


def _same_stored(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (NaN equals NaN; -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return list(a) == list(b) and all(type(k) is type(j) for k, j in zip(a, b)) \
            and all(_same_stored(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(map(_same_stored, a, b))
    if type(a) is float:
        return (a != a and b != b) or (a == b and math.copysign(1.0, a) == math.copysign(1.0, b))
    return bool(a == b)


def _check_like_the_round_trip(value: dict[Any, Any]) -> None:
    fast = _outcome(lambda: as_stored(value, "workflow input"))
    slow = _outcome(lambda: _checked(value, "workflow input")[1])
    assert fast[0] == slow[0], (value, fast, slow)
    if fast[0] == "error":
        assert fast[1] is slow[1], (value, fast, slow)
        return
    assert fast[1] is not value, "a step must be handed a copy, not the caller's dict"
    assert _same_stored(fast[1], slow[1]), (value, fast[1], slow[1])


@pytest.mark.parametrize("key", _KEYS, ids=repr)
def test_a_one_key_dict_is_handed_out_as_storage_reads_it_back_or_refused_as_storing_it_would_be(key: Any) -> None:
    """For every key a user may pass, with every kind of value (the 64-bit int bounds, NaN,
    infinities, -0.0, non-ASCII and unencodable text, str/int/float subclasses and enums,
    bytes, containers): ``as_stored`` (what ``ctx.input`` / ``ctx.steps`` hand a step, what
    ``start`` keeps) gives what storage reads back, of the same types, or the same error
    storing it raises. A user would otherwise see a step get a value a restarted run does not,
    or a value accepted that storage then cannot hold."""
    for value in _VALUES:
        _check_like_the_round_trip({key: value})
    nan = as_stored({key: math.nan}, "v") if type(key) is str and key.isascii() else None
    if nan is not None:
        assert math.isnan(nan[key])


@pytest.mark.parametrize("keys", [15, 16, 17])
@pytest.mark.parametrize("text", [4095, 4096, 4097, 17 * 2**20])
def test_the_key_and_text_bounds_of_the_copy_change_nothing_a_user_sees(keys: int, text: int) -> None:
    """Around the 16-key and 4,096-character bounds of the copy (and past the 16 MiB limit on a
    value), the result is the round trip's, and a value too large is refused with
    ValueTooLargeError whichever way it goes."""
    value: dict[str, Any] = {f"k{i:02d}": i for i in range(keys - 1)}
    value["text"] = "x" * text
    _check_like_the_round_trip(value)
    if text > 16 * 2**20:
        with pytest.raises(tf.ValueTooLargeError):
            as_stored(value, "workflow input")
        with pytest.raises(tf.ValueTooLargeError):
            check_encodable(value, "workflow input")


def test_a_dict_subclass_a_dict_holding_itself_and_a_changed_original() -> None:
    """A dict subclass reads back as a plain dict (as storage gives it); a dict holding itself
    is refused (UnencodableValueError), not copied; the copy a step gets does not change when
    the caller changes the dict it passed, nor the other way round."""
    sub = _Dict(a=1)
    copy = as_stored(sub, "v")
    assert type(copy) is dict and copy == {"a": 1}
    looped: dict[str, Any] = {"a": 1}
    looped["self"] = looped
    with pytest.raises(tf.UnencodableValueError):
        as_stored(looped, "v")
    original = {"a": 1, "b": "x"}
    copy = as_stored(original, "v")
    original["a"] = 2
    copy["b"] = "y"
    assert copy == {"a": 1, "b": "y"} and original == {"a": 2, "b": "x"}


async def test_a_step_gets_a_flat_input_as_a_restarted_run_reads_it(
    autojump_clock: trio.testing.MockClock, tmp_path: Path,
) -> None:
    """The same flat dict (64-bit bounds, -0.0, infinities, NaN, ASCII text) handed to a step
    before a restart and after it, on a SQLite file: equal, with the same types; and a step
    that changes its copy in place changes neither what the caller passed nor what storage
    holds."""
    given: dict[str, Any] = {"big": 2**64 - 1, "low": -(2**63), "zero": -0.0, "inf": math.inf, "nan": math.nan,
                             "t": True, "none": None, "s": "abc"}
    seen: list[dict[str, Any]] = []
    first_done = trio.Event()

    async def look(data: Any) -> None:
        seen.append(dict(data))
        data["s"] = "changed"  # the step's own copy
        data["new"] = 1
        first_done.set()

    async def hang(data: Any) -> None:
        await trio.sleep_forever()

    def definition() -> tf.WorkflowDefinition:
        return tf.workflow("w").task("look", job="look").task("hang", job="hang").build()

    path = tmp_path / "f.db"
    async with engine_on(SQLiteAdapter(path)) as engine:
        engine.jobs.register("look", look)
        engine.jobs.register("hang", hang)
        engine.register(definition())
        iid = await engine.start("w", given)
        await first_done.wait()
        await trio.sleep(1)
    assert given["s"] == "abc" and "new" not in given
    # The next release runs "look" again on the stored input (its record is in storage: it
    # completed; a new workflow name runs a fresh instance from that stored input).
    stored = await _stored_input(path, iid)
    assert _same_stored(seen[0], stored), (seen[0], stored)
    assert _same_stored(seen[0], msgpack.unpackb(msgpack.packb(given), raw=False))


async def _stored_input(path: Path, iid: str) -> Any:
    adapter = SQLiteAdapter(path)
    await adapter.open()
    try:
        engine_less = await adapter.load(iid)
    finally:
        await adapter.close()
    assert engine_less is not None
    from trioflow._codec import decode_stored
    return decode_stored(engine_less).input


# -- the waker: many due at once -------------------------------------------------------------------


def _counting(base: type) -> type:
    class Counted(base):  # type: ignore[misc, valid-type]
        """Counts ``due()`` calls per virtual second."""

        calls: dict[int, int] = {}

        async def due(self, before: float, limit: int, **kwargs: Any) -> Any:
            second = int(trio.current_time())
            Counted.calls[second] = Counted.calls.get(second, 0) + 1
            return await super().due(before, limit, **kwargs)
    return Counted


@pytest.fixture(params=["memory", "sqlite"])
def counted(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, type, Callable[[], Adapter]]:
    """(adapter kind, its counting class, a factory of adapters on one storage)."""
    cls = _counting(MemoryAdapter if request.param == "memory" else SQLiteAdapter)
    cls.calls = {}
    if request.param == "memory":
        memory = cls()
        return request.param, cls, lambda: memory
    return request.param, cls, lambda: cls(tmp_path / "f.db")


def _timer_workflow(fired: dict[int, list[float]], clock: Callable[[], float]) -> tf.WorkflowDefinition:
    async def after(data: Any) -> None:
        fired.setdefault(data["i"], []).append(clock())

    return tf.workflow("w").wait("nap", until=lambda ctx: ctx.input["due"]).task("after", job=after).build()


async def test_more_timers_due_together_than_a_batch_among_far_ones_each_fire_once_on_time(
    autojump_clock: trio.testing.MockClock, counted: tuple[str, type, Callable[[], Adapter]],
) -> None:
    """2,500 timers due at one moment (2.5 wake batches), started after 1,500 instances that
    wait a day: every one of the 2,500 fires once, within a few seconds of its time; none of
    the day-long ones fires early; the waker's looks stay bounded (no busy loop of ``due()``
    at one virtual instant on the memory adapter, where a look costs no real time: 500 looks
    in one virtual second, the bound tests/test_waker_review.py uses)."""
    kind, cls, storage = counted
    n, far = 2 * engine_module.WAKE_BATCH + 500, 1500
    fired: dict[int, list[float]] = {}
    clock = virtual_wall_clock()
    async with engine_on(storage(), clock) as engine:
        engine.register(_timer_workflow(fired, clock))
        t0 = clock()
        for i in range(far):
            await engine.start("w", {"due": t0 + 86_400, "i": -1 - i})
        due = t0 + 600
        ids = [await engine.start("w", {"due": due, "i": i}) for i in range(n)]
        with trio.fail_after(5_000):
            done = [await engine.wait(iid) for iid in ids]
        assert [d.status for d in done] == ["completed"] * n
        await trio.sleep(60)
        waiting = await engine.get_instances("w", status="running")
    assert sorted(fired) == list(range(n)), "a timer fired early, twice, or not at all"
    assert all(len(times) == 1 for times in fired.values())
    late = max(times[0] for times in fired.values()) - due
    assert 0 <= min(times[0] for times in fired.values()) - due
    assert late <= SLACK, f"the last of {n} timers fired {late:.1f} s late"
    assert len(waiting) == far
    if kind == "memory":
        assert max(cls.calls.values()) <= 500, sorted(cls.calls.items())[-5:]


async def test_timers_that_fell_due_while_no_engine_ran_fire_once_at_the_next_open(
    autojump_clock: trio.testing.MockClock, tmp_path: Path,
) -> None:
    """A SQLite file with 2,500 timers that fell due while no engine ran, beside 1,000 waiting
    a day: the next engine fires each of the 2,500 once, at once; the others keep waiting."""
    path = tmp_path / "f.db"
    n, far = 2 * engine_module.WAKE_BATCH + 500, 1000
    fired: dict[int, list[float]] = {}
    clock = virtual_wall_clock()
    wf = _timer_workflow(fired, clock)
    async with engine_on(SQLiteAdapter(path), clock) as engine:
        engine.register(wf)
        t0 = clock()
        for i in range(far):
            await engine.start("w", {"due": t0 + 86_400, "i": -1 - i})
        ids = [await engine.start("w", {"due": t0 + 100, "i": i}) for i in range(n)]
        await trio.sleep(10)  # all parked
    assert not fired
    await trio.sleep(500)  # no engine runs: the timers fall due
    async with engine_on(SQLiteAdapter(path), clock) as engine:
        engine.register(wf)
        opened = clock()
        done = [await finish(engine, iid, limit=5_000) for iid in ids]
        await trio.sleep(60)
        waiting = await engine.get_instances("w", status="running")
    assert [d.status for d in done] == ["completed"] * n
    assert sorted(fired) == list(range(n)) and all(len(t) == 1 for t in fired.values())
    assert max(t[0] for t in fired.values()) - opened <= SLACK
    assert len(waiting) == far


# -- the waker: full looks it cannot wholly resume -----------------------------------------------------


class _AdapterBeforeSkipWorkflows(MemoryAdapter):
    """An adapter written before ``due()`` and ``next_wake()`` took ``skip_workflows``."""

    calls: dict[int, int] = {}

    async def due(self, before: float, limit: int) -> Any:  # type: ignore[override]
        second = int(trio.current_time())
        _AdapterBeforeSkipWorkflows.calls[second] = _AdapterBeforeSkipWorkflows.calls.get(second, 0) + 1
        return await super().due(before, limit)

    async def next_wake(self) -> float | None:  # type: ignore[override]
        return await super().next_wake()


@pytest.mark.parametrize("skips", [True, False], ids=["skip_workflows", "no skip_workflows"])
async def test_full_looks_behind_overdue_rows_of_an_unregistered_workflow_still_fire_every_timer(
    autojump_clock: trio.testing.MockClock, skips: bool,
) -> None:
    """1,200 overdue instances of a workflow the next engine does not register sort before
    1,500 timers of one it does, due together: every one of those fires once and on time, and
    the waker does not spin on the rows it cannot resume (adapter with and without
    ``skip_workflows``)."""
    _AdapterBeforeSkipWorkflows.calls = {}
    cls = _counting(MemoryAdapter)
    cls.calls = {}
    adapter: Adapter = cls() if skips else _AdapterBeforeSkipWorkflows()
    calls = cls.calls if skips else _AdapterBeforeSkipWorkflows.calls
    clock = virtual_wall_clock()
    old = tf.workflow("old").wait("nap", seconds=100).task("x", job=returning("x")).build()
    fired: dict[int, list[float]] = {}
    async with engine_on(adapter, clock) as engine:
        engine.register(old)
        for i in range(1200):
            await engine.start("old", i)
        await trio.sleep(10)
    await trio.sleep(200)
    async with engine_on(adapter, clock) as engine:
        engine.register(_timer_workflow(fired, clock))
        due = clock() + 300
        ids = [await engine.start("w", {"due": due, "i": i}) for i in range(1500)]
        with trio.fail_after(5_000):
            done = [await engine.wait(iid) for iid in ids]
        await trio.sleep(30)
        old_left = await engine.get_instances("old", status="running")
    assert [d.status for d in done] == ["completed"] * 1500
    assert sorted(fired) == list(range(1500)) and all(len(t) == 1 for t in fired.values())
    assert max(t[0] for t in fired.values()) - due <= SLACK
    assert len(old_left) == 1200, "instances of an unregistered workflow must be left as they are"
    assert max(calls.values()) <= 500, sorted(calls.items(), key=lambda kv: -kv[1])[:5]


async def test_a_full_look_with_max_running_small_fires_every_timer_once(
    autojump_clock: trio.testing.MockClock, counted: tuple[str, type, Callable[[], Adapter]],
) -> None:
    """max_running=3 and 1,500 timers due together: the woken queue for a slot, and each
    fires once; the first fire within a few seconds of its time. (On the memory adapter each
    slot freed lets the waker look again: about 135 looks in that one virtual second, as
    before the change; a busy loop would be unbounded.)"""
    kind, cls, storage = counted
    fired: dict[int, list[float]] = {}
    clock = virtual_wall_clock()
    async with engine_on(storage(), clock, max_running=3) as engine:
        engine.register(_timer_workflow(fired, clock))
        due = clock() + 300
        ids = [await engine.start("w", {"due": due, "i": i}) for i in range(1500)]
        with trio.fail_after(5_000):
            done = [await engine.wait(iid) for iid in ids]
    assert [d.status for d in done] == ["completed"] * 1500
    assert sorted(fired) == list(range(1500)) and all(len(t) == 1 for t in fired.values())
    assert min(t[0] for t in fired.values()) - due <= SLACK
    if kind == "memory":
        assert max(cls.calls.values()) <= 500, sorted(cls.calls.items(), key=lambda kv: -kv[1])[:5]


class _FailingEveryThirdDue(MemoryAdapter):
    """Storage that fails (StorageUnavailableError) at every third ``due()``."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0
        self.failed = 0

    async def due(self, before: float, limit: int, **kwargs: Any) -> Any:
        self.asked += 1
        if self.asked % 3 == 0:
            self.failed += 1
            raise tf.StorageUnavailableError("storage is down for a moment")
        return await super().due(before, limit, **kwargs)


async def test_storage_failing_during_full_looks_loses_and_repeats_no_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``due()`` fails at every third look while 2,500 timers are due: the waker tries again
    (backing off), every timer fires once, within a few seconds more than its back-off."""
    adapter = _FailingEveryThirdDue()
    fired: dict[int, list[float]] = {}
    clock = virtual_wall_clock()
    n = 2 * engine_module.WAKE_BATCH + 500
    async with engine_on(adapter, clock) as engine:
        engine.register(_timer_workflow(fired, clock))
        due = clock() + 300
        ids = [await engine.start("w", {"due": due, "i": i}) for i in range(n)]
        with trio.fail_after(5_000):
            done = [await engine.wait(iid) for iid in ids]
    assert adapter.failed >= 1
    assert [d.status for d in done] == ["completed"] * n
    assert sorted(fired) == list(range(n)) and all(len(t) == 1 for t in fired.values())
    assert max(t[0] for t in fired.values()) - due <= SLACK + engine_module.WAKE_BACKOFF_MAX


# -- SQLite: the index the waker's queries name ---------------------------------------------------------


def _has_wake_index(path: Path) -> bool:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'trioflow_instances_by_wake'").fetchone() \
            is not None


@pytest.mark.parametrize("fixture", ["v1_flows.db", "v1_review.db", "v2_flows.db"])
async def test_a_file_from_an_earlier_schema_gets_the_wake_index_and_its_timers_fire(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, fixture: str,
) -> None:
    """Files written by earlier releases (schema 1, schema 2 before waiting instances) have no
    wake index; the queries of ``due()`` and ``next_wake()`` name it (INDEXED BY fails with
    "no such index" without it). Opened by this release, the file gets it, and a timer
    started there fires on time."""
    path = tmp_path / "f.db"
    shutil.copy(FIXTURES / fixture, path)
    assert not _has_wake_index(path)
    clock = virtual_wall_clock()
    async with engine_on(SQLiteAdapter(path), clock, resume=False) as engine:
        assert _has_wake_index(path)
        assert await engine.adapter.due(clock() + 10**9, 10) == []  # type: ignore[attr-defined]
        engine.register(tf.workflow("t").wait("nap", seconds=100).task("x", job=returning("x")).build())
        iid = await engine.start("t")
        started = clock()
        done = await finish(engine, iid, limit=1_000)
        assert await engine.adapter.next_wake() is None  # type: ignore[attr-defined]
    assert done.status == "completed"
    assert done.completed_at is not None and done.completed_at - started <= 100 + SLACK


async def test_a_wake_index_dropped_while_no_engine_ran_is_made_again_at_the_next_open(
    autojump_clock: trio.testing.MockClock, tmp_path: Path,
) -> None:
    """The wake index dropped by hand (a maintenance script, a restore) while no engine runs:
    the next open makes it again, and a timer parked before fires."""
    path = tmp_path / "f.db"
    clock = virtual_wall_clock()
    wf = tf.workflow("t").wait("nap", seconds=100).task("x", job=returning("x")).build()
    async with engine_on(SQLiteAdapter(path), clock) as engine:
        engine.register(wf)
        iid = await engine.start("t")
        await trio.sleep(5)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX trioflow_instances_by_wake")
    async with engine_on(SQLiteAdapter(path), clock) as engine:
        engine.register(wf)
        done = await finish(engine, iid, limit=1_000)
    assert done.status == "completed"
    assert _has_wake_index(path)
