"""Values beyond msgpack's own (issue 16, item 3): datetime (aware and naive), date, time,
timedelta, Decimal and UUID round-trip exactly through every snapshot; nothing else does."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
import pytest
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import trioflow as tf
from trioflow._codec import _pack, _read, check_encodable

VALUES: dict[str, Any] = {
    "aware": dt.datetime(2026, 10, 25, 2, 30, tzinfo=ZoneInfo("Europe/Paris")).replace(fold=1),
    "utc": dt.datetime(2026, 12, 1, 17, 9, 47, 123456, tzinfo=dt.timezone.utc),
    "offset": dt.datetime(2026, 3, 1, tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30))),
    "naive": dt.datetime(2026, 1, 2, 3, 4, 5, 6),
    "date": dt.date(2026, 2, 28),
    "time": dt.time(23, 59, 59, 999999),
    "aware time": dt.time(8, 0, tzinfo=dt.timezone(dt.timedelta(hours=9))),
    "timedelta": dt.timedelta(days=-3, seconds=5, microseconds=7),
    "decimal": decimal.Decimal("-1.2300E+5"),
    "money": decimal.Decimal("19.990"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
}


def same(a: Any, b: Any) -> bool:
    """Equal, of the same type, with the same text (so 19.990 stays 19.990, and an aware
    datetime keeps its zone and fold)."""
    return type(a) is type(b) and a == b and str(a) == str(b) and getattr(a, "fold", 0) == getattr(b, "fold", 0)


@pytest.mark.parametrize("name", list(VALUES))
def test_each_type_round_trips_exactly(name: str) -> None:
    value = VALUES[name]
    back = _read(_pack({"v": [value]}))["v"][0]
    assert same(back, value), (back, value)
    if isinstance(value, dt.datetime) and isinstance(value.tzinfo, ZoneInfo):
        assert back.tzinfo == value.tzinfo and back.utcoffset() == value.utcoffset()


def test_decimal_nan_and_infinity_round_trip() -> None:
    for text in ("NaN", "-Infinity", "sNaN", "-0"):
        back = _read(_pack(decimal.Decimal(text)))
        assert str(back) == text


@given(st.datetimes(timezones=st.none() | st.timezones()) | st.dates() | st.times() | st.timedeltas()
       | st.decimals(allow_nan=False) | st.uuids())
def test_generated_values_round_trip(value: Any) -> None:
    back = _read(_pack(value))
    assert type(back) is type(value) and back == value and str(back) == str(value)


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_they_go_through_inputs_outputs_data_and_signals(
    autojump_clock: trio.testing.MockClock, storage: str, tmp_path: Path,
) -> None:
    async def job(data: Any) -> Any:
        return {"due": data["due"] + dt.timedelta(days=1), "id": uuid.UUID(int=7)}

    def keep(ctx: tf.WorkflowContext) -> Any:
        ctx.data["amount"] = decimal.Decimal("9.99")
        return ctx.steps["job"]

    wf = (tf.workflow("w").task("job", job=job).pass_("keep", transform=keep)
          .receive("when", signal="when").build())
    path = tmp_path / "x.db"

    def adapter() -> Any:
        return tf.adapters.MemoryAdapter() if storage == "memory" else tf.adapters.SQLiteAdapter(path)

    memory = adapter()
    async with tf.open_engine(adapter=memory) as engine:
        engine.register(wf)
        iid = await engine.start("w", {"due": dt.date(2026, 12, 24)})
        await engine.signal(iid, "when", VALUES["aware"])
        done = await engine.wait(iid)
    async with tf.open_engine(adapter=memory if storage == "memory" else adapter()) as engine:
        engine.register(wf)
        stored = await engine.get_instance(iid)
    for instance in (done, stored):
        assert instance is not None and instance.status == "completed"
        assert same(instance.input["due"], dt.date(2026, 12, 24))
        assert same(instance.step_results["job"].output["due"], dt.date(2026, 12, 25))
        assert same(instance.step_results["job"].output["id"], uuid.UUID(int=7))
        assert same(instance.output, VALUES["aware"])


def test_other_types_are_refused_saying_what_to_do() -> None:
    class Money:
        pass

    for value in (Money(), {1, 2}, complex(1, 2)):
        with pytest.raises(tf.UnencodableValueError, match="convert it to a supported type.*datetime"):
            check_encodable({"x": value}, "output")


def test_an_unknown_extension_type_is_refused_when_read() -> None:
    data = msgpack.packb(msgpack.ExtType(99, b"anything"))
    with pytest.raises(ValueError, match="unknown msgpack extension type 99"):
        _read(data)


def test_an_integer_outside_64_bits_says_to_store_it_as_text_or_decimal() -> None:
    with pytest.raises(tf.UnencodableValueError, match=r"output\['n'\] is an int .* outside 64 bits.*str or a Decimal"):
        check_encodable({"n": 2**64}, "output")


def test_sqlite_busy_timeout_takes_a_timedelta(tmp_path: Path) -> None:
    assert tf.adapters.SQLiteAdapter(tmp_path / "x.db", busy_timeout=dt.timedelta(seconds=2)).busy_timeout == 2.0


# -- a run goes on with its values as stored ------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_run_sees_its_values_as_a_restarted_run_would(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, kind: str) -> None:
    # Tuples are stored as lists: the run that made them goes on with lists too, so a step
    # behaves the same whether or not a restart came in between, and wait() agrees with
    # get_instance().
    seen: dict[str, Any] = {}

    async def pair(ctx: tf.WorkflowContext) -> Any:
        seen["input"] = ctx.input
        return (1, (2, 3))

    async def look(ctx: tf.WorkflowContext) -> Any:
        seen["pair"] = ctx.steps["pair"]
        return [ctx.item, ctx.steps["pair"]]

    wf = (tf.workflow("w").step("pair", pair)
          .map("each", items=lambda ctx: ((0, "a"), (1, "b")), branch=tf.branch("b").step("look", look).build())
          .build())
    adapter = tf.adapters.MemoryAdapter() if kind == "memory" else tf.adapters.SQLiteAdapter(tmp_path / "f.db")
    async with tf.testing.open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("w", {"key": ("x", "y")})
        done = await engine.wait(iid)
        stored = await engine.get_instance(iid)
    assert seen["input"] == {"key": ["x", "y"]}
    assert seen["pair"] == [1, [2, 3]]
    assert done.output == [[[0, "a"], [1, [2, 3]]], [[1, "b"], [1, [2, 3]]]]
    assert stored is not None and stored.output == done.output
    assert done.step_results["pair"].output == stored.step_results["pair"].output == [1, [2, 3]]


async def test_execute_workflow_stores_nothing_and_keeps_values_as_returned() -> None:
    async def pair(ctx: tf.WorkflowContext) -> Any:
        return (1, 2)

    result = await tf.execute_workflow(None, tf.workflow("w").step("pair", pair).build())
    assert result.output == (1, 2)
