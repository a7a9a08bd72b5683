"""What the crash soaks check of what storage held at each kill (not collected): every instance
stored then is still there at the end, its records then are where its final history begins (a
record is never rewritten; its view says ``compensated`` once its compensation ran), and an
end stays the end (but for a completed child, compensated later by its parent)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from trioflow._snapshot import TERMINAL

Summary = dict[str, dict[str, Any]]


def _same(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["id"], "completed" if r["status"] == "compensated" else r["status"], r["output"], r["attempts"])


def held_at_kills(
    peeks: list[Summary], summary: Summary, problem: Callable[[str], None],
) -> Iterator[tuple[int, str, dict[str, Any], dict[str, Any]]]:
    """Report (through ``problem``) what breaks the above; yields ``(generation killed, id, as
    stored then, as it ended)`` for each instance still there, for a soak's own checks."""
    for gen, held in enumerate(peeks):
        for iid, then in held.items():
            now = summary.get(iid)
            if now is None:
                problem(f"{iid}, stored at the kill of generation {gen - 1}, is gone")
                continue
            if [_same(r) for r in then["history"]] != [_same(r) for r in now["history"][:len(then["history"])]]:
                problem(f"{iid}: its records at the kill of generation {gen - 1} are not where its history begins")
            if then["status"] in TERMINAL and then["status"] != now["status"] and not (
                    then["status"] == "completed" and now["status"] == "compensated" and now["parent_id"]):
                problem(f"{iid} was {then['status']} at the kill of generation {gen - 1}, then {now['status']}")
            yield gen, iid, then, now


def killed_between(peeks: list[Summary], iid: str, kid: str) -> bool:
    """Whether storage, at some kill, held ``iid``'s start of the child step for ``kid`` but not
    ``kid`` itself: the one way a parent may end listing a child that was never stored."""
    return any(iid in held and kid not in held
               and any(r["status"] == "started" and r["output"] == kid for r in held[iid]["history"])
               for held in peeks)
