"""From a re-review ("rrpurge") of commit 9671cb4 (filtered purges read only the finished rows of their
status / workflow: SQLite's three partial indexes chosen INDEXED BY, MemoryAdapter's orders by
status, by workflow and by both). Nothing broke; these two guard what is most fragile in it:

- which rows a purge by status, workflow or both deletes, against a plain model, on both
  adapters, through interleaved finishes, a completed row compensated later (its status changes
  after it finished), kept children, a parent's restart letting its finished children go,
  deletes, and instance ids used again after a purge;
- that MemoryAdapter's per-status / per-workflow orders stay bounded by what is stored over
  many cycles of finish + purge (filtered, unfiltered as retention does, and compensations):
  they keep stale places that only identity trims and sweeps drop.
"""

from __future__ import annotations

import math
import random
import tempfile
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trioflow as tf

_IDS = ["a", "b", "c", "d", "e"]
_WORKFLOWS = ["w1", "w2"]
_ENDS = ["completed", "failed", "cancelled"]

_ops = st.lists(st.one_of(
    st.tuples(st.just("create"), st.sampled_from(_IDS), st.sampled_from(_WORKFLOWS),
              st.one_of(st.none(), st.sampled_from(_ENDS)), st.one_of(st.none(), st.sampled_from(_IDS))),
    st.tuples(st.just("finish"), st.sampled_from(_IDS), st.sampled_from(_ENDS)),
    st.tuples(st.just("compensate"), st.sampled_from(_IDS)),
    st.tuples(st.just("restart"), st.sampled_from(_IDS)),
    st.tuples(st.just("delete"), st.sampled_from(_IDS)),
    st.tuples(st.just("purge"), st.integers(0, 30), st.integers(1, 3),
              st.one_of(st.none(), st.sampled_from([*_ENDS, "compensated"])),
              st.one_of(st.none(), st.sampled_from(_WORKFLOWS))),
), max_size=35)


class _Clock:
    """A wall clock set by hand: each operation one second later (no two finishes tie)."""

    now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _purge_both(adapter: Any, model: dict[str, dict[str, Any]], cutoff: float, limit: int,
                      status: str | None, workflow: str | None) -> None:
    """Purge the adapter and the model alike: the ``limit`` earliest finished rows of that
    status and workflow that nothing keeps, finished by ``cutoff``, with the kept children
    (and theirs) that match; the children they leave are kept no more."""
    def taken(row: dict[str, Any]) -> bool:
        return (row["finished"] is not None and row["finished"] <= cutoff
                and status in (None, row["status"]) and workflow in (None, row["workflow"]))

    todo = [iid for _, iid in sorted((row["finished"], iid) for iid, row in model.items()
                                     if row["parent"] is None and taken(row))[:limit]]
    gone = set(todo)
    while todo:
        parent = todo.pop()
        for iid, row in model.items():
            if row["parent"] == parent and iid not in gone and taken(row):
                gone.add(iid)
                todo.append(iid)
    for iid in gone:
        del model[iid]
    for row in model.values():
        if row["parent"] is not None and row["parent"] not in model:
            row["parent"] = None
    what = f"purge(finished_by={cutoff}, limit={limit}, status={status!r}, workflow_name={workflow!r})"
    deleted = await adapter.purge(cutoff, limit, status=status, workflow_name=workflow)
    stored = sorted(s.instance_id for s in await adapter.list_instances())
    assert stored == sorted(model), f"{what} left {stored}, the model {sorted(model)}"
    assert deleted == len(gone), f"{what} returned {deleted}, deleting {sorted(gone)}"


async def _against_model(adapter: Any, clock: _Clock, ops: list[tuple[Any, ...]]) -> None:
    model: dict[str, dict[str, Any]] = {}
    await adapter.open()
    try:
        for op in ops:
            clock.now += 1
            kind, iid = op[0], op[1]
            row = model.get(iid)
            if kind == "create":
                _, _, workflow, status, parent = op
                made = await adapter.create(iid, workflow, status or "running", start=b"s", header=b"h",
                                            parent_id=parent)
                assert made == (row is None)
                if made:
                    model[iid] = {"workflow": workflow, "status": status or "running",
                                  "finished": None if status is None else clock.now,
                                  "parent": parent if parent in model else None, "records": 0}
            elif kind in ("finish", "compensate") and row is not None:
                if (row["status"], kind) not in (("running", "finish"), ("completed", "compensate")):
                    continue
                status = op[2] if kind == "finish" else "compensated"
                await adapter.checkpoint(iid, status, b"h", [b"r"], first_seq=row["records"])
                row.update(status=status, finished=clock.now, records=row["records"] + 1)
            elif kind == "restart" and row is not None and row["status"] == "running":
                await adapter.checkpoint(iid, "running", b"h", [b"r"], first_seq=row["records"], start=b"s2",
                                         restart=True)
                row["records"] = 1
                for child in model.values():  # its finished children are kept by it no more
                    if child["parent"] == iid and child["status"] != "running":
                        child["parent"] = None
            elif kind == "delete" and row is not None and row["status"] != "running":
                assert await adapter.delete(iid) is True
                del model[iid]
                for child in model.values():
                    if child["parent"] == iid:
                        child["parent"] = None
            elif kind == "purge":
                _, age, limit, status, workflow = op
                await _purge_both(adapter, model, clock.now - age, limit, status, workflow)
        stored = {s.instance_id: s.status for s in await adapter.list_instances()}
        assert stored == {iid: row["status"] for iid, row in model.items()}
        await _purge_both(adapter, model, math.inf, 1000, None, None)
    finally:
        await adapter.close()


_SETTINGS = {"deadline": None, "derandomize": True, "database": None,
             "suppress_health_check": list(HealthCheck)}


@settings(max_examples=300, **_SETTINGS)
@given(ops=_ops, sqlite=st.booleans())
def test_filtered_purges_delete_what_a_plain_model_says_on_both_adapters(ops: list[tuple[Any, ...]],
                                                                         sqlite: bool) -> None:
    """Guard. A user purges by status, by workflow or both (``engine.purge(older_than=...,
    status=..., workflow=...)``) beside retention, with children kept by their parents and
    completed children compensated later (README: "a compensating parent compensates its
    completed children as units ... and ends compensated"; the protocol: a purge by status goes
    by the status an instance has now). They expect exactly: every finished row of that status
    and workflow finished by the cutoff, earliest first up to the limit, never a running one,
    a kept child only with its parent (and only if it matches too), an instance id free again
    after its purge. Held on both adapters (3,000 MemoryAdapter and 700 SQLite examples in the
    review, ties in finish times too); this keeps a derandomized slice of it."""
    clock = _Clock()
    if not sqlite:
        adapter: Any = tf.adapters.MemoryAdapter()
        adapter.use_clock(clock)
        trio.run(_against_model, adapter, clock, ops)
        return
    with tempfile.TemporaryDirectory() as folder:
        adapter = tf.adapters.SQLiteAdapter(Path(folder) / "model.db")
        adapter.use_clock(clock)
        trio.run(_against_model, adapter, clock, ops)


def _places(adapter: Any) -> int:
    """Every place MemoryAdapter's finish orders hold (current or stale), the filtered ones too."""
    orders = [adapter._order, *adapter._filtered.values()]
    return sum(len(order.finished) + len(order.released) for order in orders)


async def test_memory_filtered_finish_orders_stay_bounded_over_many_purge_cycles() -> None:
    """Guard. A long-lived MemoryAdapter (tests, a dev server) keeps one old ``timed_out``
    instance of ``w1`` for inspection, and runs cycles of: instances of three workflows finish
    with three statuses, some completed ones are compensated later, a parent keeps children,
    and purges go by status, by workflow (not w1) or both, so that the kept row stands at the
    front of the order of all and of w1's: every place behind it that goes stale is dropped by
    a sweep, not a trim. The user expects memory to follow what is stored: the per-status /
    per-workflow orders added by 9671cb4 must not keep a place for every row ever finished.
    Held: 30,000 rows finished over 3,000 cycles leave a few hundred places (with the sweeps
    turned off, _COMPACT_AT = 10**9, this fails with tens of thousands)."""
    clock = _Clock()
    adapter: Any = tf.adapters.MemoryAdapter()
    adapter.use_clock(clock)
    rnd = random.Random(7)
    statuses, workflows = ["completed", "failed", "cancelled"], ["w1", "w2", "w3"]
    await adapter.open()
    await adapter.create("kept", "w1", "timed_out", start=b"s", header=b"h")
    worst = 0
    for cycle in range(3000):
        parent = f"p{cycle}"
        await adapter.create(parent, "parent", "running", start=b"s", header=b"h")
        for k in range(10):
            iid = f"i{cycle}-{k}"
            await adapter.create(iid, rnd.choice(workflows), "running", start=b"s", header=b"h",
                                 parent_id=parent if k < 2 else None)
            clock.now += 1
            status = rnd.choice(statuses)
            await adapter.checkpoint(iid, status, b"h", [], first_seq=0)
            if status == "completed" and rnd.random() < 0.3:
                clock.now += 1
                await adapter.checkpoint(iid, "compensated", b"h", [b"undone"], first_seq=0)
        await adapter.checkpoint(parent, rnd.choice(statuses), b"h", [], first_seq=0)
        pick = cycle % 3
        await adapter.purge(clock.now - 30, 1000,
                            status=rnd.choice([*statuses, "compensated"]) if pick in (0, 2) else None,
                            workflow_name=rnd.choice(["w2", "w3", "parent"]) if pick in (1, 2) else None)
        worst = max(worst, _places(adapter) - 8 * len(adapter._rows))
    assert await adapter.load("kept") is not None
    await adapter.close()
    # A row nothing keeps has a place in 4 orders; each order (1 + 5 statuses + 4 workflows +
    # up to 20 pairs) sweeps its stale places once they outnumber its current ones by
    # _COMPACT_AT (64): at most 8 places a row and 30 x 64 beside, whatever the cycles.
    assert worst <= 30 * 65, f"finish orders hold {worst} places beyond eight per stored row"
