"""``WorkflowInstance.data``: an instance's shared data in every view of it (a dashboard shows
a running subscription's period without a step of its own), as stored and as it runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


def _counting() -> tf.WorkflowDefinition:
    async def count(ctx: tf.WorkflowContext) -> int:
        ctx.set("period", ctx.get("period", 0) + 1)
        return int(ctx.get("period"))

    return (tf.workflow("counting").with_data({"plan": "basic"}).step("count", count)
            .receive("next", signal="renew", timeout=3600, catch=[tf.Catch(errors=[tf.ALL], next="done")])
            .choice("again", choices=[tf.when(lambda ctx: ctx.get("period") < 3, next="count")], default="done")
            .succeed("done").build())


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_every_view_shows_the_shared_data_as_it_stands(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, kind: str) -> None:
    def adapter() -> tf.adapters.MemoryAdapter | tf.adapters.SQLiteAdapter:
        return tf.adapters.MemoryAdapter() if kind == "memory" else tf.adapters.SQLiteAdapter(str(tmp_path / "d.db"))

    wf = _counting()
    store = adapter()
    async with open_test_engine(adapter=store) as engine:
        engine.register(wf)
        iid = await engine.start("counting", None)
        await trio.sleep(1)
        await engine.signal(iid, "renew")
        await trio.sleep(1)
        running = await engine.get_instance(iid)
        assert running is not None and running.status == "running"
        assert running.data == {"plan": "basic", "period": 2}
        [listed] = await engine.get_instances("counting")
        assert listed.data == running.data
        running.data["period"] = 99  # (a view's own mapping: the instance does not change)
        assert (await engine.get_instance(iid)).data["period"] == 2  # type: ignore[union-attr]
        assert json.loads(json.dumps(running.to_dict()))["data"]["plan"] == "basic"
    async with open_test_engine(adapter=store if kind == "memory" else adapter()) as engine:
        engine.register(wf)
        stored = await engine.get_instance(iid)
        assert stored is not None and stored.data == {"plan": "basic", "period": 2}
        await engine.signal(iid, "renew")
        done = await engine.wait(iid)
    assert done.status == "completed" and done.data == {"plan": "basic", "period": 3}


async def test_an_unreadable_instance_shows_no_data(autojump_clock: trio.testing.MockClock) -> None:
    store = tf.adapters.MemoryAdapter()
    async with open_test_engine(adapter=store) as engine:
        await store.create("broken", "counting", "running", start=b"junk", header=b"junk")
        engine.register(_counting())
        view = await engine.get_instance("broken")
    assert view is not None and view.status == "failed" and view.data == {}
