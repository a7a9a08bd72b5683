"""The stateful example of docs/testing.md, verbatim: it must keep passing as written (and the
page must show what this file holds: see the last test)."""

# --- begin example ---
import contextlib
import tempfile
from pathlib import Path

import trioflow as tf
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from trioflow.testing import engine_portal

DAY = 86_400


async def expire(ctx: tf.WorkflowContext) -> str:
    return "expired"


approval = (tf.workflow("approval")
            .receive("approve", signal="approved", timeout=DAY,
                     catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="expire")])
            .succeed("done")
            .step("expire", expire, end=True)
            .build())


class Approvals(RuleBasedStateMachine):
    """Requests wait a day for approval, on a SQLite file, across restarts of the process."""

    def __init__(self) -> None:
        super().__init__()
        self.stack = contextlib.ExitStack()  # a fresh file per example: closed by teardown()
        folder = self.stack.enter_context(tempfile.TemporaryDirectory())
        self.portal = self.stack.enter_context(engine_portal(
            setup=lambda engine: engine.register(approval),  # each time an engine opens
            adapter=tf.adapters.SQLiteAdapter(Path(folder) / "flows.db")))
        self.due: dict[str, float] = {}  # the model: when each request's wait times out
        self.approved: set[str] = set()

    def waiting(self) -> list[str]:
        return [i for i, due in self.due.items() if i not in self.approved and self.portal.now < due]

    @rule()
    def request(self) -> None:
        iid = self.portal.call(lambda engine: engine.start("approval"))
        self.due[iid] = self.portal.now + DAY

    @rule()
    def approve_the_oldest(self) -> None:
        if waiting := self.waiting():
            self.portal.call(lambda engine: engine.signal(waiting[0], "approved", {"by": "ann"}))
            self.approved.add(waiting[0])

    @rule(hours=st.integers(1, 30))
    def time_passes(self, hours: int) -> None:
        self.portal.advance(hours * 3_600)

    @rule(hours=st.integers(0, 30))
    def the_process_restarts(self, hours: int) -> None:
        self.portal.restart(downtime=hours * 3_600)

    @invariant()
    def each_request_stands_as_the_model_says(self) -> None:
        waiting = self.waiting()
        for iid in self.due:
            got = self.portal.call(lambda engine: engine.get_instance(iid))
            assert got is not None  # (None: no such instance)
            if iid in waiting:
                assert got.status == "running" and got.waiting is not None and got.waiting["signal"] == "approved"
            else:
                assert got.status == "completed"
                assert got.output == ({"by": "ann"} if iid in self.approved else "expired")

    def teardown(self) -> None:
        self.stack.close()


TestApprovals = settings(max_examples=10, stateful_step_count=20, deadline=None)(Approvals).TestCase
# --- end example ---


def test_the_pages_examples_are_these_files() -> None:
    """docs/testing.md shows this file's example, and test_docs_testing_example.py's, as they are."""
    here = Path(__file__).parent
    page = (here.parent / "docs" / "testing.md").read_text()
    for name in ("test_docs_testing_example.py", "test_docs_portal_example.py"):
        text = (here / name).read_text()
        example = text.split("# --- begin example ---\n", 1)[1].split("# --- end example ---", 1)[0]
        assert f"```python\n{example}```" in page, f"docs/testing.md does not show {name}'s example as it is"
