"""The queue of runs waiting for a slot keeps first-in-first-out order (a cancelled run put back
goes first) and answers "is it queued?" and "since when?" as its order does, whatever was added
and taken."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trioflow._slot_queue import SlotQueue

ops = st.lists(st.tuples(st.sampled_from(["append", "appendleft", "popleft", "remove"]), st.integers(0, 5)),
               max_size=60)


@given(ops)
def test_the_queue_behaves_as_a_deque_and_knows_its_members(steps: list[tuple[str, int]]) -> None:
    queue: SlotQueue[object] = SlotQueue()
    runs = [object() for _ in range(6)]
    model: list[object] = []
    since: dict[object, float] = {}
    for t, (op, i) in enumerate(steps):
        run = runs[i]
        if op in ("append", "appendleft"):
            if run in model:
                continue  # (a run is queued once at a time)
            getattr(queue, op)(run, float(t))
            since[run] = float(t)
            if op == "append":
                model.append(run)
            else:
                model.insert(0, run)
        elif op == "popleft":
            if model:
                assert queue.popleft() is model.pop(0)
        elif run in model:
            queue.remove(run)
            model.remove(run)
        assert list(queue) == model and len(queue) == len(model) and bool(queue) == bool(model)
        assert all((r in queue) == (r in model) for r in runs)
        assert all(queue.queued_at(r) == (since[r] if r in model else None) for r in runs)
