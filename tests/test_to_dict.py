"""``WorkflowInstance.to_dict()`` gives JSON-ready values (issue 16, item 2)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from typing import Any

import trio.testing

import trioflow as tf


async def test_an_instance_as_json(autojump_clock: trio.testing.MockClock) -> None:
    async def charge(data: Any) -> Any:
        return {"at": dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.timezone.utc), "amount": decimal.Decimal("9.99"),
                "ref": uuid.UUID(int=1), "raw": b"\x00\x01", "pair": (1, 2), 3: "int key"}

    async def fail(data: Any) -> None:
        raise ValueError("nope")

    wf = tf.workflow("w").task("charge", job=charge).task("ship", job=fail).build()
    async with tf.open_engine() as engine:
        engine.register(wf)
        instance = await engine.wait(await engine.start("w", {"when": dt.date(2026, 12, 1)}))
    out = instance.to_dict()
    again = json.loads(json.dumps(out))
    assert again == out
    assert out["status"] == "failed" and out["error_name"] == "ValueError" and out["cause"] == "nope"
    assert out["input"] == {"when": "2026-12-01"}
    charged = out["step_results"]["charge"]["output"]
    assert charged == {"at": "2026-12-01T09:30:00+00:00", "amount": "9.99", "ref": str(uuid.UUID(int=1)),
                       "raw": "AAE=", "pair": [1, 2], "3": "int key"}
    assert [r["id"] for r in out["history"]] == ["charge#1", "ship#1"]
    assert out["history"][1]["status"] == "failed" and out["compensated_steps"] == []
