"""A child's id and its end notice name the lane of its parent that started it: parsed back in
one place (``trioflow._lanes``) as they are built, for every lane a child step can run in."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trioflow._lanes import (
    MAIN,
    branch_lane,
    child_ended_signal,
    child_instance_id,
    child_lane,
    ended_child,
    execution_id,
    item_lane,
)

names = st.text(alphabet="abcxyz-_.", min_size=1, max_size=6)


@st.composite
def lanes(draw: st.DrawFn) -> str:
    """The main line, or a branch or a map item, nested in one another a few levels deep."""
    key = MAIN
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            key = branch_lane(draw(names), draw(names), key)
        else:
            key = item_lane(draw(names), draw(st.integers(0, 10_000)), key)
    return key


@given(parent=st.text(min_size=1, max_size=12).filter(lambda t: "\x00" not in t), lane=lanes(),
       step=names, execution=st.integers(1, 1_000))
def test_a_childs_id_and_notice_name_the_lane_that_started_it(parent: str, lane: str, step: str,
                                                             execution: int) -> None:
    child = child_instance_id(parent, execution_id(lane, step, execution))
    assert ended_child(child_ended_signal(child)) == child
    assert child_lane(parent, child) == lane


def test_other_ids_and_signals_name_no_lane() -> None:
    assert child_lane("p", "q/step#1") is None
    assert ended_child("approved") is None
