"""Lifecycle logging on the ``trioflow`` logger (issue 16, item 11)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf


class Boom(Exception):
    pass


async def ok(data: Any) -> str:
    return "ok"


async def boom(data: Any) -> None:
    raise Boom("card declined")


async def test_an_instance_that_fails_logs_one_warning_with_its_ids(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioflow")
    wf = tf.workflow("checkout").task("reserve", job=ok).task("charge", job=boom).build()
    async with tf.open_engine() as engine:
        engine.register(wf)
        iid = await engine.start("checkout")
        await engine.wait(iid)
    failed = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failed) == 1
    record = failed[0]
    assert record.name == "trioflow" and "failed at step 'charge'" in record.getMessage()
    assert (record.instance_id, record.workflow_name, record.failed_step, record.error_name, record.cause) == (
        iid, "checkout", "charge", "Boom", "card declined")
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and r is not record], (
        "nothing per step above DEBUG")


async def test_cancelled_and_timed_out_instances_say_so(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    async def slow(data: Any) -> None:
        await trio.sleep(100)

    caplog.set_level(logging.WARNING, logger="trioflow")
    async with tf.open_engine() as engine:
        engine.register(tf.workflow("slow").task("s", job=slow).with_timeout(5).build())
        engine.register(tf.workflow("cancelled").task("s", job=slow).build())
        timed_out = await engine.start("slow")
        cancelled = await engine.start("cancelled")
        await trio.sleep(1)
        await engine.cancel(cancelled)
        await engine.wait(timed_out)
        await engine.wait(cancelled)
    lines = {r.instance_id: r.getMessage() for r in caplog.records}
    assert "timed out" in lines[timed_out] and "was cancelled" in lines[cancelled]


async def test_instances_resumed_at_open_are_counted_at_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    release = trio.Event()

    async def hang(data: Any) -> None:
        await release.wait()

    wf = tf.workflow("w").task("h", job=hang).build()
    path = tmp_path / "x.db"
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(wf)
        for _ in range(3):
            await engine.start("w")
        await trio.sleep(0.1)
    caplog.set_level(logging.INFO, logger="trioflow")
    release.set()
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(wf)
        await engine.resume()
        for instance in await engine.get_instances("w"):
            await engine.wait(instance.id)
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert [r.getMessage() for r in infos] == ["resumed 3 unfinished instance(s) of workflow 'w' left by an earlier engine"]
    assert infos[0].resumed == 3 and infos[0].workflow_name == "w"
