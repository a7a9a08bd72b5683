"""A differential test: trioflow against a small reference interpreter of SPEC.md's saga and
state-machine semantics (Semantics 1-3, sections 11, 12 and 14; README "Reference" and
docs/errors.md, docs/fanout.md), written from those texts, not from runtime/ or actors/.

The workflows are built from a small description (``T`` task steps, ``Loop`` back-edges through
a choice, ``Succeed``, ``Fail``, ``Par`` parallel steps, ``MapS`` map steps, ``Child`` steps) that
is compiled twice: to a trioflow definition, and run by :class:`Oracle`. Jobs are deterministic:
a table keyed by (execution id, attempt) says which calls raise which named error; everything
else returns ``{"id": execution id, "a": attempt}``. Jobs never await, so the only freedom the
SPEC leaves, the interleaving of parallel branches and map items, is compared by sets and per
lane order only.

The review that wrote it (about 15,000 generated workflows) found trioflow agreeing with the
oracle everywhere; where the texts left a choice open (lane names of a fan-out in a parallel
branch, what a branch's ``ctx.steps`` shows of its siblings, a child whose undo partly failed),
README and docs/fanout.md now say what trioflow does, and the oracle follows it.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow.testing import open_test_engine

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------------------------------------
# Errors the jobs raise (messages never contain an error name: string matchers match names only)


class ErrA(Exception):
    pass


class ErrB(Exception):
    pass


class ErrC(ErrA):  # a subclass: a type matcher for ErrA matches it, the name "ErrA" does not
    pass


ERRORS = {"ErrA": ErrA, "ErrB": ErrB, "ErrC": ErrC}
ERR_NAMES = tuple(ERRORS)
SUBCLASSES = {"ErrA": {"ErrA", "ErrC"}, "ErrB": {"ErrB"}, "ErrC": {"ErrC"}}
# Matchers (retry_on, Catch.errors): a name or message fragment, "T:<type>", "P:<name>" (a
# predicate on tf.error_name(e)), or "ALL" (tf.ALL).
MATCHERS = ERR_NAMES + ("T:ErrA", "T:ErrB", "T:ErrC", "P:ErrA", "P:ErrC", "ALL")


def compiled(token: str) -> Any:
    if token == "ALL":
        return tf.ALL
    if token.startswith("T:"):
        return ERRORS[token[2:]]
    if token.startswith("P:"):
        name = token[2:]
        return lambda e, name=name: tf.error_name(e) == name
    return token


TIMEOUT_CAUSE = "<StepTimeoutError>"  # its wording is not specified: compared normalised


def message(exec_id: str, attempt: int, comp: bool = False) -> str:
    return f"boom {'undo ' if comp else ''}{exec_id} try {attempt}"


# ---------------------------------------------------------------------------------------------
# The workflow description


UNSET: Any = object()
INPUT = {"in": 1}  # every run's workflow input
OBSERVE: Any = "observe"  # a succeed step's output: {"steps": dict(ctx.steps), "error": ctx.error}
OBSERVE_LANE: Any = "observe-lane"  # {"error": ctx.error, "item": ctx.item, "lane": ctx.lane}


@dataclass(frozen=True)
class C:
    errors: tuple[str, ...]
    next: str
    result: str | None = None


class _CatchesAllLast:
    """A catcher that matches every error (``ALL``) goes after the others, in the model as in
    the workflow built from it: build() refuses a catcher after one (it could never run). Of
    several, all but the last lose their ``ALL`` (keeping every target reachable)."""

    catch: tuple[C, ...]

    def __post_init__(self) -> None:
        ordered = sorted(self.catch, key=lambda c: "ALL" in c.errors)  # (stable)
        for i, c in enumerate(ordered[:-1]):
            if "ALL" in c.errors:
                ordered[i] = C(tuple(e for e in c.errors if e != "ALL") or ("NeverRaisedError",), c.next, c.result)
        object.__setattr__(self, "catch", tuple(ordered))


@dataclass(frozen=True)
class T(_CatchesAllLast):
    name: str
    comp: bool = False
    style: str = "step"  # "step": execute(ctx) / compensate(ctx, result); "task": job(data) / compensate(output)
    attempts: int = 1
    retry_on: tuple[str, ...] | None = None
    catch: tuple[C, ...] = ()
    next: str | None = None
    cap: float | None = None  # Retry.max_interval (None: the default, 30 s)
    dur: int = 0  # each attempt sleeps this long (virtual time) before it returns or raises
    timeout: float | None = None  # the step's timeout=, bounding each attempt


@dataclass(frozen=True)
class Tick:
    """A saga step that counts its runs in ``ctx.data["n"]`` (a loop's counter); output: the count."""
    name: str = "tick"


@dataclass(frozen=True)
class Loop:
    """A choice: back to ``back`` while ``ctx.data["n"] < limit``, else ``default``."""
    name: str
    back: str
    limit: int
    default: str | None  # None: no default, NoChoiceMatchedError once the limit is reached


@dataclass(frozen=True)
class Succeed:
    name: str
    output: Any = UNSET


@dataclass(frozen=True)
class Fail:
    name: str
    error: str
    cause: str


@dataclass(frozen=True)
class Par(_CatchesAllLast):
    name: str
    branches: tuple[tuple[str, tuple[T, ...]], ...]
    on_error: str = "wait-all"
    catch: tuple[C, ...] = ()


@dataclass(frozen=True)
class MapS(_CatchesAllLast):
    name: str
    items: tuple[Any, ...]
    branch: tuple[T, ...]
    on_error: str = "wait-all"
    tolerated: int | float = 0
    max_concurrency: int | None = None
    catch: tuple[C, ...] = ()


@dataclass(frozen=True)
class Child(_CatchesAllLast):
    name: str
    workflow: "WF"
    catch: tuple[C, ...] = ()


@dataclass(frozen=True)
class WF:
    name: str
    steps: tuple[Any, ...]
    data: dict[str, Any] = field(default_factory=dict)
    default_retry: tuple[int, tuple[str, ...] | None] | None = None  # (max_attempts, retry_on)
    timeout: float | None = None  # with_timeout


@dataclass
class Behaviour:
    """Which calls raise: (execution id, attempt) -> error name, for jobs and compensations."""
    fails: dict[tuple[str, int], str] = field(default_factory=dict)
    comp_fails: dict[tuple[str, int], str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# The reference interpreter


class TimedOut(Exception):
    """The workflow's timeout came (SPEC 4: a timed-out instance ends timed_out, compensated)."""


class LaneFailed(Exception):
    def __init__(self, name: str, cause: str, step: str, aliases: tuple[str, ...] = ()) -> None:
        super().__init__(name, cause, step)
        self.name, self.cause, self.step, self.aliases = name, cause, step, aliases


@dataclass
class Done:
    exec_id: str
    step: T
    output: Any
    lane: str
    key: str = ""  # the jobs' key: a child instance's ids carry "<child step's execution id>>"


@dataclass
class Outcome:
    status: str = "running"
    output: Any = None
    error_name: str | None = None
    cause: str | None = None
    failed_step: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    calls: list[tuple[str, int]] = field(default_factory=list)
    comp_calls: list[tuple[str, int]] = field(default_factory=list)
    compensated_ids: list[str] = field(default_factory=list)
    compensated_steps: list[str] = field(default_factory=list)
    comp_errors_by_exec: dict[str, str] = field(default_factory=dict)  # id -> error name
    history: list[tuple[str, str, str]] = field(default_factory=list)  # (lane, exec id, status)
    lanes_open: bool = False  # parallel/map fail-fast that failed: per-lane facts only
    siblings_open: bool = False  # the same, with one branch that can fail: the outcome is known
    children: dict[str, "Outcome"] = field(default_factory=dict)
    slept: float = 0.0  # retry delays of the main line, jobs and compensations (linear runs only)


def matches(errors: tuple[str, ...] | None, name: str, cause: str = "", aliases: tuple[str, ...] = ()) -> bool:
    """README "Retries": a string matches "when the string is the error's name or occurs in its
    message"; types by isinstance; tf.ALL everything; docs/errors.md: catchers match the same
    way, a child's failure by the child's error or ChildWorkflowError, a fail-fast branch's by
    the branch's own error, a wait-all ParallelError by its name or a fragment of its message."""
    if errors is None:
        return True
    for e in errors:
        if e == "ALL":
            return True
        if e.startswith("T:"):
            if name in SUBCLASSES[e[2:]]:
                return True
        elif e.startswith("P:"):
            if name == e[2:]:
                return True
        elif e == name or e in cause or e in aliases:
            return True
    return False


def lane_key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


class Oracle:
    def __init__(self, wf: WF, behaviour: Behaviour, prefix: str = "", cancel_at: float | None = None,
                 input: Any = INPUT) -> None:
        self.wf, self.b, self.prefix, self.input = wf, behaviour, prefix, input
        self.now = 0.0
        self.cancel_at = cancel_at
        self.out = Outcome(data=dict(wf.data))
        self.done: list[Done] = []
        self.execs: dict[tuple[str, str], int] = {}
        self.child_oracles: dict[str, Oracle] = {}
        self.lane_steps: dict[str, dict[str, Any]] = {}
        self.lane_error: dict[str, Any] = {}
        self.lane_item: dict[str, Any] = {}
        self.scope: dict[str, str] = {}
        self.writers: dict[str, set[str]] = {}  # shared-data key -> the lanes that set it

    # -- one task execution: SPEC 9 "retry: no sleep after the last attempt; retry_on is honoured"
    @staticmethod
    def delay(step: T, attempt: int) -> float:
        """README: "the delay after attempt n is min(interval * backoff_rate**(n-1), max_interval)";
        here interval 1, backoff_rate 2."""
        return min(1.0 * 2.0 ** (attempt - 1), 30.0 if step.cap is None else step.cap)

    def policy(self, step: T) -> T:
        """README: "A step without retry= (and no default_retry on its workflow) is tried once";
        default_retry "reaches the tasks inside branches and map items too"."""
        if step.attempts == 1 and step.retry_on is None and self.wf.default_retry is not None:
            attempts, retry_on = self.wf.default_retry
            return dataclasses.replace(step, attempts=attempts, retry_on=retry_on, cap=None)
        return step

    def task(self, lane: str, step: T) -> tuple[str, str, Any, tuple[str, str] | None]:
        step = self.policy(step)
        e = self.execs[(lane, step.name)] = self.execs.get((lane, step.name), 0) + 1
        exec_id = f"{lane + '/' if lane else ''}{step.name}#{e}"
        key = self.prefix + exec_id
        attempt = 0
        while True:
            attempt += 1
            self.out.calls.append((key, attempt))
            # SPEC 4: "a step's timeout bounds each attempt"; README: it "fails it with
            # StepTimeoutError, retried as any error is".
            timed_out = step.timeout is not None and step.dur > step.timeout
            self.advance(step.timeout if timed_out else step.dur, lane, exec_id)  # type: ignore[arg-type]
            err = "StepTimeoutError" if timed_out else self.b.fails.get((key, attempt))
            # (the wording is trioflow's: the SPEC names only the error)
            cause = f"step '{step.name}' timed out after {step.timeout:g} s" if timed_out else message(key, attempt)
            if err is None:
                return exec_id, key, {"id": key, "a": attempt}, None
            if attempt < step.attempts and matches(step.retry_on, err, cause):
                self.advance(self.delay(step, attempt), lane, exec_id)
                continue
            return exec_id, key, None, (err, cause)

    def advance(self, seconds: float, lane: str, exec_id: str) -> None:
        """Time passes in the step ``exec_id``; the workflow's timeout may cut it short, which
        is recorded failed ("a task step's execution a cancel, a timeout ... cut short is
        recorded failed, and its compensation does not run")."""
        deadlines = [d for d in (self.wf.timeout, self.cancel_at) if d is not None]
        deadline = min(deadlines) if deadlines else None
        if deadline is not None and self.now + seconds >= deadline:
            self.now = deadline
            self.ended_by = "cancelled" if deadline == self.cancel_at else "timed_out"
            self.out.history.append((lane, exec_id, "failed"))
            raise TimedOut()
        self.now += seconds

    def exec_id(self, lane: str, name: str) -> str:
        e = self.execs[(lane, name)] = self.execs.get((lane, name), 0) + 1
        return f"{lane + '/' if lane else ''}{name}#{e}"

    def run_lane(self, lane: str, steps: tuple[Any, ...], last: Any) -> Any:
        """Runs a lane to its end; returns its output or raises LaneFailed."""
        by_name = {s.name: i for i, s in enumerate(steps)}
        seen = self.lane_steps.setdefault(lane, {})
        i = 0
        while i < len(steps):
            s = steps[i]
            nxt = i + 1
            self.lane_error.setdefault(lane, None)  # ctx.error: the failure last caught in this lane
            if isinstance(s, T):
                exec_id, key, output, err = self.task(lane, s)
                if err is None:
                    self.done.append(Done(exec_id, s, output, lane, key))
                    self.out.history.append((lane, exec_id, "completed"))
                    last = seen[s.name] = output
                else:
                    name, cause = err
                    catcher = next((c for c in s.catch if matches(c.errors, name, cause)), None)
                    if catcher is None:
                        self.out.history.append((lane, exec_id, "failed"))
                        raise LaneFailed(name, cause, s.name)
                    self.out.history.append((lane, exec_id, "caught"))
                    last = seen[s.name] = self.lane_error[lane] = {"error": name, "cause": cause}
                    if catcher.result is not None:
                        self.out.data[catcher.result] = last
                        self.writers.setdefault(catcher.result, set()).add(lane)
                    nxt = by_name[catcher.next]
                if err is None and s.next is not None:
                    nxt = by_name[s.next]
            elif isinstance(s, Tick):
                e = self.execs[(lane, s.name)] = self.execs.get((lane, s.name), 0) + 1
                self.out.data["n"] = self.out.data.get("n", 0) + 1
                last = seen[s.name] = self.out.data["n"]
                self.out.history.append((lane, f"{s.name}#{e}", "completed"))
            elif isinstance(s, Loop):
                e = self.execs[(lane, s.name)] = self.execs.get((lane, s.name), 0) + 1
                if self.out.data.get("n", 0) >= s.limit and s.default is None:
                    # SPEC 3: "else the instance fails with a clear 'no choice matched' error"
                    self.out.history.append((lane, f"{s.name}#{e}", "failed"))
                    raise LaneFailed("NoChoiceMatchedError", "", s.name)
                self.out.history.append((lane, f"{s.name}#{e}", "completed"))
                seen[s.name] = last
                nxt = by_name[s.back if self.out.data.get("n", 0) < s.limit else s.default]
            elif isinstance(s, Succeed):
                self.out.history.append((lane, self.exec_id(lane, s.name), "completed"))
                if s.output is OBSERVE:
                    out = {"steps": dict(seen), "error": self.lane_error[lane]}
                elif s.output is OBSERVE_LANE:
                    out = {"error": self.lane_error[lane], "item": self.lane_item.get(lane), "lane": lane}
                else:
                    out = last if s.output is UNSET else s.output
                seen[s.name] = out
                return out
            elif isinstance(s, Fail):
                self.out.history.append((lane, self.exec_id(lane, s.name), "failed"))
                raise LaneFailed(s.error, s.cause, s.name)
            elif isinstance(s, (Par, MapS, Child)):
                e = self.execs[(lane, s.name)] = self.execs.get((lane, s.name), 0) + 1
                exec_id = f"{lane + '/' if lane else ''}{s.name}#{e}"
                try:
                    if isinstance(s, Par):
                        output = self.parallel(lane, s, last)
                    elif isinstance(s, MapS):
                        output = self.map(lane, s)
                    else:
                        output = self.child(lane, s, exec_id)
                except LaneFailed as failure:
                    catcher = next((c for c in s.catch if matches(c.errors, failure.name, failure.cause,
                                                                 failure.aliases)), None)
                    if catcher is None:
                        self.out.history.append((lane, exec_id, "failed"))
                        raise
                    self.out.history.append((lane, exec_id, "caught"))
                    last = seen[s.name] = self.lane_error[lane] = {"error": failure.name, "cause": failure.cause}
                    if catcher.result is not None:
                        self.out.data[catcher.result] = last
                        self.writers.setdefault(catcher.result, set()).add(lane)
                    nxt = by_name[catcher.next]
                else:
                    self.out.history.append((lane, exec_id, "completed"))
                    if isinstance(s, Child):
                        self.done.append(Done(exec_id, T(s.name, comp=True), output, lane, exec_id))
                    last = seen[s.name] = output
            else:  # pragma: no cover
                raise AssertionError(s)
            i = nxt
        return last

    def parallel(self, lane: str, s: Par, last: Any) -> Any:
        outputs, failures = {}, []
        at_start = dict(self.lane_steps.get(lane, {}))
        for index, (bname, bsteps) in enumerate(s.branches):
            # As trioflow names them (see REPORT.md, Ambiguities): lanes nest under a map item's
            # lane, not under a parallel branch's (unique step names keep them apart).
            blane = lane_key(self.scope.get(lane, ""), f"{s.name}/{bname}")
            self.scope[blane] = self.scope.get(lane, "")
            try:
                # README: "first in their lane, the lane's input (... in a branch what the lane
                # running the parallel step had)"; the innermost item stays ctx.item.
                if lane in self.lane_item:
                    self.lane_item[blane] = self.lane_item[lane]
                # README: ctx.steps shows a lane's own outputs, "then those of the items around it,
                # then the main line's"
                # (what its siblings completed meanwhile may show too: compare() trims it)
                self.lane_steps[blane] = dict(at_start)
                outputs[bname] = self.run_lane(blane, bsteps, last)
            except LaneFailed as f:
                failures.append((bname, f))
                if s.on_error == "fail-fast":
                    if self.any_would_fail(lane, s, index, last):
                        self.out.lanes_open = True
                    self.out.siblings_open = True
                    raise
            finally:
                # README: ctx.steps shows "its parallel branches' steps too, as on the main line"
                self.lane_steps.setdefault(lane, {}).update(
                    {k: v for k, v in self.lane_steps.get(blane, {}).items() if at_start.get(k, UNSET) is not v})
        if failures:
            text = "; ".join(f"branch '{b}' failed with {f.name}: {f.cause}" for b, f in failures)
            raise LaneFailed("ParallelError", f"parallel step '{s.name}': {text}", s.name)
        return outputs

    def any_would_fail(self, lane: str, s: Par, index: int, last: Any) -> bool:
        """Whether a branch after ``index`` fails when run alone (then which one fails first
        is the scheduler's)."""
        for bname, bsteps in s.branches[index + 1:]:
            scratch = copy.deepcopy(self)
            blane = lane_key(self.scope.get(lane, ""), f"{s.name}/{bname}")
            scratch.scope[blane] = self.scope.get(lane, "")
            try:
                scratch.run_lane(blane, bsteps, last)
            except LaneFailed:
                return True
        return False

    def tolerated(self, s: MapS) -> int:
        n = len(s.items)
        if isinstance(s.tolerated, int):
            return s.tolerated
        # docs/fanout.md: "the most failures f with f / count <= fraction"
        return max((f for f in range(n + 1) if f / n <= s.tolerated), default=0) if n else 0

    def map(self, lane: str, s: MapS) -> Any:
        slots: list[Any] = []
        failures: list[tuple[int, LaneFailed]] = []
        allowed = self.tolerated(s)

        def map_error() -> LaneFailed:
            # docs/fanout.md: "a MapError (an ExceptionGroup of ItemErrors, its message naming
            # the first five)". The wording is not specified: causes are compared normalised.
            named = "; ".join(f"item {i} failed with {f.name}: {f.cause}" for i, f in failures[:5])
            return LaneFailed("MapError", f"map step '{s.name}': {len(failures)} of {len(s.items)} items failed,"
                                          f" {allowed} tolerated: {named}", s.name)

        for index, _item in enumerate(s.items):
            ilane = lane_key(self.scope.get(lane, ""), f"{s.name}/#{index}")
            self.scope[ilane] = ilane
            self.lane_item[ilane] = _item
            self.lane_steps[ilane] = dict(self.lane_steps.get(lane, {}))
            try:
                slots.append(self.run_lane(ilane, s.branch, _item))
            except LaneFailed as f:
                failures.append((index, f))
                slots.append({"error": f.name, "cause": f.cause})
                if len(failures) > allowed and s.on_error == "fail-fast":
                    if s.max_concurrency != 1:
                        self.out.lanes_open = True
                    if allowed == 0:
                        raise LaneFailed(f.name, f.cause, f.step, f.aliases) from None
                    raise map_error() from None
        if len(failures) > allowed:
            raise map_error()
        return slots

    def child(self, lane: str, s: Child, exec_id: str) -> Any:
        """SPEC 14: the child's output is the step's output; a child that fails fails the step
        (with the child's own error name and cause, docs/fanout.md "Outcome"); a failed child
        compensated itself before it ended."""
        base = (self.prefix[:-1] + "/" if self.prefix else "") + exec_id  # the child's id, less the root's
        # README: "no input=: a map item's child gets the item, any other the workflow input"
        sub = Oracle(s.workflow, self.b, prefix=base + ">", input=self.lane_item.get(lane, self.input))
        result = sub.run()
        self.child_oracles[exec_id] = sub
        self.out.children[exec_id] = result
        self.out.calls += result.calls
        self.out.comp_calls += result.comp_calls
        if result.status != "completed":
            # docs/fanout.md: "A catch for the child's error ... matches it, and so does one for
            # ChildWorkflowError (the class or the name)."
            raise LaneFailed(result.error_name or "", result.cause or "", s.name, ("ChildWorkflowError",))
        return result.output

    def compensate(self) -> None:
        """SPEC 1 / section 11: every completed execution with a compensation, exactly once,
        newest first; a failing one is retried by its step's policy, then recorded, and the
        rest still run."""
        for d in reversed(self.done):
            if not d.step.comp:
                continue
            d = dataclasses.replace(d, step=self.policy(d.step))
            if d.exec_id in self.out.children:
                # SPEC 14.3: the child's own compensations, newest first, at the step's place.
                sub = self.child_oracles[d.exec_id]
                before = len(sub.out.comp_calls)
                sub.compensate()
                sub.out.status = "compensated"
                self.out.comp_calls += sub.out.comp_calls[before:]
                if sub.out.comp_errors_by_exec:
                    # (REPORT.md, Ambiguities: a child whose undo had a failure is the parent's
                    # failed compensation, not in its compensated_steps, as trioflow does it.)
                    self.out.comp_errors_by_exec[d.exec_id] = "ChildCompensationError"
                else:
                    self.out.compensated_ids.append(d.exec_id)
                    self.out.compensated_steps.append(d.step.name)
                continue
            attempt = 0
            while True:
                attempt += 1
                self.out.comp_calls.append((d.key, attempt))
                err = self.b.comp_fails.get((d.key, attempt))
                if err is None:
                    self.out.compensated_ids.append(d.exec_id)
                    self.out.compensated_steps.append(d.step.name)
                    break
                if attempt < d.step.attempts and matches(d.step.retry_on, err, message(d.key, attempt, True)):
                    self.now += self.delay(d.step, attempt)
                    continue
                self.out.comp_errors_by_exec[d.exec_id] = err
                break

    def run(self) -> Outcome:
        self.out.__dict__["racy_keys"] = self.writers  # (filled as the run goes)
        try:
            # README: a step first in its lane passes "the lane's input (the workflow input on
            # the main line ...)" on.
            self.out.output = self.run_lane("", self.wf.steps, self.input)
            self.out.status = "completed"
        except TimedOut:
            # SPEC 1: "Cancellation and workflow timeout compensate the same way"
            self.out.status = self.ended_by
            self.out.error_name = "<timeout>"  # (name and cause not specified: not compared)
            self.compensate()
        except LaneFailed as f:
            self.out.status = "failed"
            self.out.error_name, self.out.cause, self.out.failed_step = f.name, f.cause, f.step
            self.compensate()
        self.out.slept = self.now
        return self.out


def oracle(wf: WF, b: Behaviour, cancel_at: float | None = None) -> Outcome:
    return Oracle(wf, b, cancel_at=cancel_at).run()


# ---------------------------------------------------------------------------------------------
# Compiling a description to trioflow, with jobs that log their calls


@dataclass
class Log:
    calls: list[tuple[str, int]] = field(default_factory=list)
    comp_calls: list[tuple[str, int]] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)  # what a callable saw that it should not have


def item_of(exec_id: str) -> int | None:
    """The map item an execution id names (``m/#3/mx0#1`` -> 3), if any."""
    parts = [p for p in exec_id.split("/") if p.startswith("#")]
    return int(parts[-1][1:]) if parts else None


def job_key(info: Any) -> str:
    """The key of a job call: its execution id, after ``"<child id less the root's>>"`` in a
    child instance (children's ids are ``"<parent id>/<child step's execution id>"``)."""
    rest = info.instance_id.split("/", 1)
    return (rest[1] + ">" if len(rest) == 2 else "") + info.execution_id


def make_callables(step: T, b: Behaviour, log: Log) -> tuple[Any, Any]:
    async def run_once() -> Any:
        info = tf.current_step()
        exec_id, attempt = job_key(info), info.attempt
        log.calls.append((exec_id, attempt))
        if step.dur:
            await trio.sleep(step.dur)
        err = b.fails.get((exec_id, attempt))
        if err is not None:
            raise ERRORS[err](message(exec_id, attempt))
        return {"id": exec_id, "a": attempt}

    def undo_once() -> None:
        info = tf.current_step()
        exec_id, attempt = job_key(info), info.attempt
        log.comp_calls.append((exec_id, attempt))
        err = b.comp_fails.get((exec_id, attempt))
        if err is not None:
            raise ERRORS[err](message(exec_id, attempt, comp=True))

    def check_result(result: Any) -> None:
        # README: "Saga compensations are called compensate(ctx, result); a task's compensate
        # ... is called with the step's output": the output of the execution being undone.
        exec_id = job_key(tf.current_step())
        if not (isinstance(result, dict) and result.get("id") == exec_id):
            log.wrong.append(f"compensation of {exec_id} got {result!r}")

    def check_item(ctx: Any, what: str) -> None:
        # docs/fanout.md: each item runs with ctx.item; "a compensation sees its item in ctx.item".
        exec_id = tf.current_step().execution_id
        item = item_of(exec_id)
        # (items are their index, or 10 + it for maps nested in a branch)
        if item is not None and (ctx.item not in (item, item + 10)
                                 or (what == "execute" and ctx.item_index != item)):
            log.wrong.append(f"{what} of {exec_id} saw item {ctx.item!r} index {ctx.item_index!r}")

    if step.style == "step":
        async def execute(ctx: Any) -> Any:
            check_item(ctx, "execute")
            return await run_once()

        async def compensate(ctx: Any, result: Any) -> None:
            check_item(ctx, "compensate")
            check_result(result)
            undo_once()
    else:
        async def execute(data: Any) -> Any:  # type: ignore[misc]
            return await run_once()

        async def compensate(output: Any) -> None:  # type: ignore[misc]
            check_result(output)
            undo_once()

    return execute, (compensate if step.comp else None)


def retry_of(step: T) -> tf.Retry | None:
    if step.attempts == 1 and step.retry_on is None:
        return None
    return tf.Retry(max_attempts=step.attempts, interval=1.0, backoff_rate=2.0,
                    **({} if step.cap is None else {"max_interval": step.cap}),
                    retry_on=[compiled(t) for t in step.retry_on] if step.retry_on is not None else None)


def catches(cs: tuple[C, ...]) -> list[tf.Catch]:
    return [tf.Catch(errors=[compiled(t) for t in c.errors], next=c.next, result=c.result) for c in cs]


async def tick(ctx: Any) -> int:
    n = ctx.get("n", 0) + 1
    ctx.set("n", n)
    return n


def add_steps(builder: Any, steps: tuple[Any, ...], b: Behaviour, log: Log, registry: dict[str, Any]) -> Any:
    for s in steps:
        if isinstance(s, T):
            execute, compensate = make_callables(s, b, log)
            if s.style == "step":
                builder = builder.step(s.name, execute, compensate, retry=retry_of(s), catch=catches(s.catch),
                                       next=s.next, timeout=s.timeout)
            else:
                builder = builder.task(s.name, job=execute, compensate=compensate, retry=retry_of(s),
                                       catch=catches(s.catch), next=s.next, timeout=s.timeout)
        elif isinstance(s, Tick):
            builder = builder.step(s.name, tick)
        elif isinstance(s, Loop):
            limit = s.limit
            builder = builder.choice(s.name, choices=[tf.when(lambda ctx, limit=limit: ctx.get("n", 0) < limit,
                                                              next=s.back)], default=s.default)
        elif isinstance(s, Succeed):
            if s.output is OBSERVE:
                builder = builder.succeed(s.name, output=lambda ctx: {"steps": dict(ctx.steps), "error": ctx.error})
            elif s.output is OBSERVE_LANE:
                builder = builder.succeed(s.name, output=lambda ctx: {"error": ctx.error, "item": ctx.item,
                                                                      "lane": ctx.lane})
            else:
                builder = builder.succeed(s.name) if s.output is UNSET else builder.succeed(s.name, output=s.output)
        elif isinstance(s, Fail):
            builder = builder.fail(s.name, error=s.error, cause=s.cause)
        elif isinstance(s, Par):
            branches = [add_steps(tf.branch(bn), bs, b, log, registry).build() for bn, bs in s.branches]
            builder = builder.parallel(s.name, branches=branches, on_error=s.on_error, catch=catches(s.catch))
        elif isinstance(s, MapS):
            items = list(s.items)
            branch = add_steps(tf.branch("item"), s.branch, b, log, registry).build()
            builder = builder.map(s.name, items=lambda ctx, items=items: items, branch=branch,
                                  on_error=s.on_error, tolerated_failures=s.tolerated,
                                  max_concurrency=s.max_concurrency, catch=catches(s.catch))
        elif isinstance(s, Child):
            registry[s.workflow.name] = build(s.workflow, b, log, registry)
            builder = builder.child(s.name, workflow=s.workflow.name, catch=catches(s.catch))
        else:  # pragma: no cover
            raise AssertionError(s)
    return builder


def build(wf: WF, b: Behaviour, log: Log, registry: dict[str, Any] | None = None) -> tf.WorkflowDefinition:
    builder = add_steps(tf.workflow(wf.name), wf.steps, b, log, {} if registry is None else registry)
    if wf.default_retry is not None:
        attempts, retry_on = wf.default_retry
        builder = builder.default_retry(tf.Retry(max_attempts=attempts, interval=1.0, backoff_rate=2.0, retry_on=(
            None if retry_on is None else [compiled(t) for t in retry_on])))
    if wf.data:
        builder = builder.with_data(wf.data)
    if wf.timeout is not None:
        builder = builder.with_timeout(wf.timeout)
    return builder.build()


# ---------------------------------------------------------------------------------------------
# Running through trioflow


@dataclass
class Seen:
    status: str
    output: Any
    error_name: str | None
    cause: str | None
    failed_step: str | None
    data: dict[str, Any]
    compensated_steps: list[str]
    comp_errors_by_exec: dict[str, str]
    calls: list[tuple[str, int]]
    comp_calls: list[tuple[str, int]]
    history: list[tuple[str, str, str]] | None = None
    wrong: list[str] = field(default_factory=list)
    duration: float | None = None
    instance: Any = field(default=None, repr=False)
    engine_instances: dict[str, Any] = field(default_factory=dict, repr=False)


def error_names(by_exec: dict[str, str]) -> dict[str, str]:
    return {k: v.split(":", 1)[0] for k, v in by_exec.items()}


async def _in_process(wf: WF, b: Behaviour) -> Seen:
    log = Log()
    definition = build(wf, b, log)
    r = await tf.execute_workflow(None, definition, dict(INPUT))
    return Seen(r.status, r.output, r.error_name, r.cause, r.failed_step, dict(r.data), list(r.compensated_steps),
                error_names(r.compensation_errors_by_execution), log.calls, log.comp_calls, wrong=log.wrong,
                duration=r.duration)


def run_in_process(wf: WF, b: Behaviour) -> Seen:
    return trio.run(_in_process, wf, b, clock=trio.testing.MockClock(autojump_threshold=0))


def run_on_engine(wf: WF, b: Behaviour, adapter: Any = None, cancel_at: float | None = None) -> Seen:
    log = Log()
    registry: dict[str, Any] = {}
    results: list[tf.WorkflowResult] = []
    definition = build(wf, b, log, registry)
    definition = attrs.evolve(definition, hooks=tf.Hooks(on_complete=results.append, on_failed=results.append))

    async def main() -> Seen:
        options = {} if adapter is None else {"adapter": adapter}
        async with open_test_engine(**options) as engine:
            for child in registry.values():
                engine.register(child)
            engine.register(definition)
            iid = await engine.start(wf.name, dict(INPUT))
            if cancel_at is not None:
                await trio.sleep(cancel_at)
                await engine.cancel(iid)
            i = await engine.wait(iid)
            others = {c: await engine.get_instance(c) for c in i.children}
            await trio.sleep(1)  # (on_complete/on_failed run beside the instance)
        r = results[0]
        return Seen(i.status, i.output, i.error_name, i.cause, i.failed_step, dict(r.data), list(i.compensated_steps),
                    error_names(i.compensation_errors_by_execution), log.calls, log.comp_calls,
                    history=[(h.lane, h.id, h.status) for h in i.history if h.status != "started"], instance=i,
                    wrong=log.wrong, duration=r.duration,
                    engine_instances=others)

    return tf.testing.run(main)


def normal(value: Any) -> Any:
    """MapError's message wording is not specified: compared as "<MapError>"."""
    if isinstance(value, dict):
        if value.get("error") == "MapError" and set(value) == {"error", "cause"}:
            return {"error": "MapError", "cause": "<MapError>"}
        if value.get("error") == "StepTimeoutError" and set(value) == {"error", "cause"}:
            return {"error": "StepTimeoutError", "cause": TIMEOUT_CAUSE}
        return {k: normal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normal(v) for v in value]
    return value


def trim(expected: Any, seen: Any, depth: int = 0) -> Any:
    """``seen`` with what a branch's ctx.steps may or may not show dropped: in a parallel
    branch, the outputs its sibling branches completed so far (the scheduler's; the SPEC
    leaves it open). Only keys the oracle does not expect, in lanes other than the main line."""
    if isinstance(expected, dict) and isinstance(seen, dict):
        if depth > 0 and set(expected) == {"steps", "error"} and isinstance(seen.get("steps"), dict):
            seen = dict(seen, steps={k: v for k, v in seen["steps"].items() if k in expected["steps"]})
        return {k: trim(expected[k], v, depth + 1) if k in expected else v for k, v in seen.items()}
    if isinstance(expected, list) and isinstance(seen, list) and len(expected) == len(seen):
        return [trim(e, v, depth + 1) for e, v in zip(expected, seen)]
    return seen


def compare(expected: Outcome, seen: Seen, *, engine: bool, tol: float = 1e-6) -> None:
    flat = expected.__dict__.get("_steps", [])
    writers = expected.__dict__.get("racy_keys", {})
    expected = dataclasses.replace(expected, output=normal(expected.output), data=normal(expected.data))
    expected.__dict__["_steps"] = flat
    seen = dataclasses.replace(seen, output=trim(expected.output, normal(seen.output)), data=normal(seen.data))
    # A key that concurrent lanes (branches, items) set: which write is last is the scheduler's.
    racy = {k for k, lanes in writers.items() if len(lanes) > 1}
    if racy:
        expected.data = {k: v for k, v in expected.data.items() if k not in racy}
        seen.data = {k: v for k, v in seen.data.items() if k not in racy}
    ctx = f"\nexpected={expected}\nseen={seen}"
    assert seen.wrong == [], ctx
    assert seen.status == expected.status, ctx
    if expected.lanes_open:
        # A fail-fast fan-out that failed: which siblings ran, and which failure came first, is
        # the scheduler's. Only what holds whatever the interleaving is checked.
        invariants(flat, seen)
        return
    if expected.siblings_open:
        # Fail-fast with one branch that fails: the outcome is known, not what its siblings ran.
        invariants(flat, seen)
        assert (seen.error_name, seen.cause, seen.failed_step) == (
            expected.error_name, expected.cause, expected.failed_step), ctx
        lane_keys = {k for k, lanes in writers.items() if lanes - {""}}  # what siblings set is open too
        assert ({k: v for k, v in seen.data.items() if k not in lane_keys}
                == {k: v for k, v in expected.data.items() if k not in lane_keys}), ctx
        if expected.status == "completed":
            drop = (lambda o: {k: v for k, v in o.items() if k != "steps"} if isinstance(o, dict) else o)
            assert drop(seen.output) == drop(expected.output), ctx
        assert [c for c in seen.calls if lane_of(c[0]) == ""] == [c for c in expected.calls if lane_of(c[0]) == ""]
        return
    if expected.status not in ("timed_out", "cancelled"):
        assert seen.error_name == expected.error_name, ctx
    if expected.error_name not in ("MapError", "NoChoiceMatchedError", "StepTimeoutError", "<timeout>"):
        assert seen.cause == expected.cause, ctx  # (those wordings are not specified)
    if expected.status == "completed":
        assert seen.output == expected.output, ctx
    if expected.status not in ("timed_out", "cancelled"):
        assert seen.failed_step == expected.failed_step, ctx
    assert seen.data == expected.data, ctx
    if not any(isinstance(s, (Par, MapS, Child)) for s in _all_steps(expected)):
        # SPEC 9: "retry: no sleep after the last attempt"; jobs never sleep: the run lasts
        # exactly its retry delays (virtual time).
        assert seen.duration == pytest.approx(expected.slept, abs=tol), ctx
    if not any(isinstance(s, (Par, MapS)) for s in _all_steps(expected)):
        assert seen.calls == expected.calls, ctx
        assert seen.comp_calls == expected.comp_calls, ctx
        assert seen.compensated_steps == expected.compensated_steps, ctx
        assert seen.comp_errors_by_exec == expected.comp_errors_by_exec, ctx
        if engine:
            assert seen.history == expected_history(expected), ctx
    else:
        compare_lanes(expected, seen, engine=engine)


def invariants(flat: list[Any], seen: Seen) -> None:
    """SPEC 1 / 11 whatever the interleaving: every completed execution with a compensation is
    compensated exactly once when the run fails, none when it completes, newest first per lane."""
    with_comp = {s.name for s in flat if isinstance(s, T) and s.comp}
    ctx = f"\nseen={seen}"
    # (a child's own compensations are its business: a cancelled child undoes itself)
    firsts = [i for i, a in seen.comp_calls if a == 1 and ">" not in i]
    assert len(firsts) == len(set(firsts)), ctx
    if seen.history is None:
        return
    completed = [i for _, i, st_ in seen.history if st_ in ("completed", "compensated")
                 and i.rsplit("#", 1)[0].rsplit("/", 1)[-1] in with_comp]
    if seen.status == "completed":
        assert firsts == [], ctx
    else:
        assert sorted(firsts) == sorted(completed), ctx
        assert per_lane(firsts) == {k: v[::-1] for k, v in per_lane(completed).items()}, ctx


def _all_steps(expected: Outcome) -> list[Any]:
    return expected.__dict__.get("_steps", [])


def expected_history(expected: Outcome) -> list[tuple[str, str, str]]:
    compensated = set(expected.compensated_ids)
    return [(lane, i, "compensated" if i in compensated else status) for lane, i, status in expected.history]


def lane_of(exec_id: str) -> str:
    return exec_id.rsplit("/", 1)[0] if "/" in exec_id else ""


def per_lane(seq: list[Any], key: Any = lambda x: x) -> dict[str, list[Any]]:
    lanes: dict[str, list[Any]] = {}
    for x in seq:
        lanes.setdefault(lane_of(key(x)), []).append(x)
    return lanes


def segments(seq: list[tuple[str, int]]) -> list[Any]:
    out: list[Any] = [[]]
    for c in seq:
        if lane_of(c[0]) == "":
            out += [c, []]
        else:
            out[-1].append(c)
    return [sorted(x) if isinstance(x, list) else x for x in out]


def compare_lanes(expected: Outcome, seen: Seen, *, engine: bool) -> None:
    ctx = f"\nexpected={expected}\nseen={seen}"
    # Calls and compensation calls: the same multiset, the same order within each lane.
    assert sorted(seen.calls) == sorted(expected.calls), ctx
    assert per_lane(seen.calls, lambda c: c[0]) == per_lane(expected.calls, lambda c: c[0]), ctx
    assert sorted(seen.comp_calls) == sorted(expected.comp_calls), ctx
    assert per_lane(seen.comp_calls, lambda c: c[0]) == per_lane(expected.comp_calls, lambda c: c[0]), ctx
    assert sorted(seen.compensated_steps) == sorted(expected.compensated_steps), ctx
    assert seen.comp_errors_by_exec == expected.comp_errors_by_exec, ctx
    # Main-line calls keep their order relative to every other call: what a lane does between
    # two main-line steps (a fan-out's lanes) is a set the SPEC leaves unordered across lanes.
    assert segments(seen.calls) == segments(expected.calls), ctx
    assert segments(seen.comp_calls) == segments(expected.comp_calls), ctx
    if engine:
        exp = expected_history(expected)
        assert sorted(seen.history or []) == sorted(exp), ctx
        assert per_lane(seen.history or [], lambda h: h[1]) == per_lane(exp, lambda h: h[1]), ctx
        # StepResult history is "every execution in order" (of their ends): a fan-out's lanes end
        # between the main-line records around the fan-out step.
        assert (segments([(i, st_) for _, i, st_ in seen.history or []])
                == segments([(i, st_) for _, i, st_ in exp])), ctx


def check(wf: WF, b: Behaviour, *, engine: bool = True, in_process: bool = True) -> Outcome:
    expected = oracle(wf, b)
    expected.__dict__["_steps"] = list(_flatten(wf.steps))
    if in_process:
        compare(expected, run_in_process(wf, b), engine=False)
    if engine:
        compare(expected, run_on_engine(wf, b), engine=True)
    return expected


def _flatten(steps: tuple[Any, ...]) -> Any:
    for s in steps:
        yield s
        if isinstance(s, Par):
            for _, bs in s.branches:
                yield from _flatten(bs)
        elif isinstance(s, MapS):
            yield from _flatten(s.branch)


# ---------------------------------------------------------------------------------------------
# Strategies


@st.composite
def behaviours(draw: Any, ids: list[str], max_fails: int = 6, max_comp_fails: int = 3) -> Behaviour:
    keys = [(i, a) for i in ids for a in (1, 2, 3)]
    if not keys:
        return Behaviour()
    fails = draw(st.dictionaries(st.sampled_from(keys), st.sampled_from(ERR_NAMES), max_size=max_fails))
    comp_fails = draw(st.dictionaries(st.sampled_from(keys), st.sampled_from(ERR_NAMES), max_size=max_comp_fails))
    return Behaviour(fails, comp_fails)


@st.composite
def task_steps(draw: Any, name: str, catch: tuple[C, ...] = ()) -> T:
    return T(name, comp=draw(st.booleans()), style=draw(st.sampled_from(["step", "task"])),
             attempts=draw(st.integers(1, 4)), cap=draw(st.sampled_from([None, 1.5, 3.0])),
             dur=draw(st.sampled_from([0, 0, 0, 1, 2, 3])), timeout=draw(st.sampled_from([None, None, 1.5, 2.5])),
             retry_on=draw(st.none() | st.lists(st.sampled_from(MATCHERS), min_size=1, max_size=2,
                                                  unique=True).map(tuple)),
             catch=catch)


@st.composite
def catchers(draw: Any, targets: list[str]) -> tuple[C, ...]:
    n = draw(st.integers(1, 2))
    return tuple(C(tuple(draw(st.lists(st.sampled_from(MATCHERS), min_size=1, max_size=2, unique=True))),
                   draw(st.sampled_from(targets)), draw(st.sampled_from([None, "err", "err2"])))
                 for _ in range(n))


@st.composite
def linear(draw: Any, loops: bool = True, handlers: bool = True) -> tuple[WF, Behaviour]:
    k = draw(st.integers(1, 4))
    names = [f"s{i}" for i in range(k)]
    with_handlers = handlers and draw(st.booleans())
    handler_end = draw(st.sampled_from(["abort", "handled"]))
    targets = ["h1"] + (["abort"] if handler_end == "abort" else [])
    steps: list[Any] = []
    for i, n in enumerate(names):
        # A catch may also route back to an earlier step (a retry loop through the handler):
        # ctx.error then stays the caught failure while later executions complete.
        back_targets = names[:i] if draw(st.booleans()) else []
        catch = draw(catchers(targets + back_targets)) if with_handlers and draw(st.booleans()) else ()
        steps.append(draw(task_steps(n, catch)))
    if with_handlers and not any(c.next == "h1" for s in steps for c in s.catch):
        j = draw(st.integers(0, k - 1))
        steps[j] = dataclasses.replace(steps[j], catch=steps[j].catch + (C(("ErrA", "ErrB", "ErrC"), "h1", None),))
    passes = 1
    no_default = False
    if loops and draw(st.booleans()):
        passes = draw(st.integers(2, 3))
        back = draw(st.sampled_from(names))
        no_default = draw(st.integers(0, 3)) == 0
        steps += [Tick(), Loop("loop", back, passes, None if no_default else "done")]
    tail_needed = not no_default and (with_handlers or passes > 1 or draw(st.booleans()))
    if tail_needed:
        steps.append(Succeed("done", draw(st.sampled_from([UNSET, {"fixed": True}, OBSERVE]))))
    if with_handlers:
        steps.append(draw(task_steps("h1")))
        steps.append(Fail("abort", "Abort", "gave up") if handler_end == "abort"
                     else Succeed("handled", draw(st.sampled_from([UNSET, OBSERVE]))))
    ids = [f"{n}#{e}" for n in names for e in range(1, passes + 3)] + (["h1#1"] if with_handlers else [])
    default_retry = draw(st.none() | st.tuples(st.integers(2, 3), st.none() | st.lists(
        st.sampled_from(MATCHERS), min_size=1, max_size=2, unique=True).map(tuple)))
    timeout = draw(st.sampled_from([None, None, 1.25, 2.25, 3.75, 6.25, 9.75]))
    wf = WF("linear", tuple(steps), data=draw(st.sampled_from([{}, {"seed": 1}])), default_retry=default_retry,
            timeout=timeout)
    return wf, draw(behaviours(ids))


# ---------------------------------------------------------------------------------------------
# 1-3: linear sagas, loops, catch / succeed / fail: properties


@SETTINGS
@given(linear(loops=False, handlers=False))
def test_linear_sagas_agree_with_the_oracle(case: tuple[WF, Behaviour]) -> None:
    check(*case)


@SETTINGS
@given(linear(loops=True, handlers=False))
def test_loops_agree_with_the_oracle(case: tuple[WF, Behaviour]) -> None:
    check(*case)


@SETTINGS
@given(linear(loops=True, handlers=True))
def test_catch_succeed_fail_agree_with_the_oracle(case: tuple[WF, Behaviour]) -> None:
    check(*case)


# ---------------------------------------------------------------------------------------------
# 4: parallel and map


def handler_tail(draw: Any, targets_from: list[str]) -> list[Any]:
    return [Succeed("done"), draw(task_steps("h1")),
            draw(st.sampled_from([Fail("abort", "Abort", "gave up"), Succeed("handled", OBSERVE)]))]


@st.composite
def parallels(draw: Any) -> tuple[WF, Behaviour]:
    nb = draw(st.integers(1, 3))
    branches = []
    ids = ["s0#1", "s1#1", "h1#1"]
    for b in range(nb):
        ns = draw(st.integers(1, 2))
        bsteps = tuple(dataclasses.replace(draw(task_steps(f"b{b}x{j}")), style="step") for j in range(ns))
        branches.append((f"br{b}", bsteps))
        ids += [f"p/br{b}/b{b}x{j}#1" for j in range(ns)]
    on_error = draw(st.sampled_from(["wait-all", "fail-fast"]))
    with_catch = draw(st.booleans())
    catch = ()
    if with_catch:
        catch = (C(tuple(draw(st.lists(st.sampled_from(MATCHERS + ("ParallelError",)), min_size=1, max_size=3,
                                       unique=True))), "h1", draw(st.sampled_from([None, "err"]))),)
    steps: list[Any] = [draw(task_steps("s0")), Par("p", tuple(branches), on_error, catch), draw(task_steps("s1"))]
    if with_catch:
        steps += handler_tail(draw, ["h1"])
    return WF("par", tuple(steps)), draw(behaviours(ids, max_fails=5, max_comp_fails=2))


FRACTIONS = (0.1, 0.2, 0.25, 0.29, 0.3, 1 / 3, 0.34, 0.5, 0.6, 0.7, 2 / 3, 0.9, 1.0)


@st.composite
def maps(draw: Any) -> tuple[WF, Behaviour]:
    n = draw(st.integers(0, 6))
    ns = draw(st.integers(1, 2))
    branch = tuple(dataclasses.replace(draw(task_steps(f"mx{j}")), style="step") for j in range(ns))
    on_error = draw(st.sampled_from(["wait-all", "fail-fast"]))
    tolerated = draw(st.integers(0, 3) | st.sampled_from(FRACTIONS))
    max_concurrency = draw(st.sampled_from([None, 1, 2]))
    with_catch = draw(st.booleans())
    catch = ()
    if with_catch:
        catch = (C(tuple(draw(st.lists(st.sampled_from(MATCHERS + ("MapError",)), min_size=1, max_size=3,
                                       unique=True))), "h1", draw(st.sampled_from([None, "err"]))),)
    steps: list[Any] = [draw(task_steps("s0")),
                        MapS("m", tuple(range(n)), branch, on_error, tolerated, max_concurrency, catch),
                        draw(task_steps("s1"))]
    if with_catch:
        steps += handler_tail(draw, ["h1"])
    ids = ["s0#1", "s1#1", "h1#1"] + [f"m/#{i}/mx{j}#1" for i in range(n) for j in range(ns)]
    return WF("map", tuple(steps)), draw(behaviours(ids, max_fails=6, max_comp_fails=2))


@SETTINGS
@given(parallels())
def test_parallel_steps_agree_with_the_oracle(case: tuple[WF, Behaviour]) -> None:
    check(*case)


@SETTINGS
@given(maps())
def test_map_steps_agree_with_the_oracle(case: tuple[WF, Behaviour]) -> None:
    check(*case)


# ---------------------------------------------------------------------------------------------
# 5: child workflows and nested compensation (engine only: execute_workflow has no children)


@st.composite
def families(draw: Any) -> tuple[WF, Behaviour]:
    nk = draw(st.integers(1, 3))
    kid_steps: list[Any] = [dataclasses.replace(draw(task_steps(f"k{j}")), catch=()) for j in range(nk)]
    loops = draw(st.booleans())
    if loops:
        kid_steps += [Tick(), Loop("loop", "k0", 2, "kdone"), Succeed("kdone")]
    kid = WF("kid", tuple(kid_steps))
    with_catch = draw(st.booleans())
    catch = (C(tuple(draw(st.lists(st.sampled_from(MATCHERS + ("ChildWorkflowError",)), min_size=1, max_size=2,
                                   unique=True))), "h1", draw(st.sampled_from([None, "err"]))),) if with_catch else ()
    steps: list[Any] = [draw(task_steps("s0")), Child("c", kid, catch), draw(task_steps("s1"))]
    if with_catch:
        steps += handler_tail(draw, ["h1"])
    ids = ["s0#1", "s1#1", "h1#1"] + [f"c#1>k{j}#{e}" for j in range(nk) for e in (1, 2)]
    return WF("parent", tuple(steps)), draw(behaviours(ids, max_fails=5, max_comp_fails=2))


def check_family(wf: WF, b: Behaviour) -> None:
    expected = oracle(wf, b)
    expected.__dict__["_steps"] = list(_flatten(wf.steps))
    seen = run_on_engine(wf, b)
    compare(expected, seen, engine=True)
    assert len(seen.instance.children) == len(expected.children)
    if not expected.children:
        return
    (child_id,) = seen.instance.children
    child = seen.engine_instances[child_id]
    (exp_child,) = expected.children.values()
    assert child.parent_id == seen.instance.id
    assert child.status == exp_child.status, (child, exp_child)
    assert list(child.compensated_steps) == exp_child.compensated_steps, (child, exp_child)
    assert error_names(child.compensation_errors_by_execution) == exp_child.comp_errors_by_exec


@SETTINGS
@given(families())
def test_child_workflows_agree_with_the_oracle(case: tuple[WF, Behaviour]) -> None:
    check_family(*case)


# ---------------------------------------------------------------------------------------------
# 2 + 4 + 5: a fan-out (parallel, map or child step) run again through a choice's back-edge


@st.composite
def fanout_loops(draw: Any) -> tuple[WF, Behaviour, bool]:
    kind = draw(st.sampled_from(["par", "map", "child"]))
    passes = draw(st.integers(1, 2))
    ids = [f"{n}#{e}" for n in ("s0", "s1", "h1") for e in (1, 2)]
    if kind == "par":
        branches = []
        for b in range(draw(st.integers(1, 2))):
            bsteps = tuple(dataclasses.replace(draw(task_steps(f"b{b}x{j}")), style="step")
                           for j in range(draw(st.integers(1, 2))))
            branches.append((f"br{b}", bsteps))
            ids += [f"x/br{b}/b{b}x{j}#{e}" for j in range(len(bsteps)) for e in (1, 2)]
        fan: Any = Par("x", tuple(branches), draw(st.sampled_from(["wait-all", "fail-fast"])))
    elif kind == "map":
        n = draw(st.integers(0, 3))
        branch = (dataclasses.replace(draw(task_steps("mx0")), style="step"),)
        fan = MapS("x", tuple(range(n)), branch, "wait-all", draw(st.integers(0, 1)), draw(st.sampled_from([None, 1])))
        ids += [f"x/#{i}/mx0#{e}" for i in range(n) for e in (1, 2)]
    else:
        kid = WF("kid", tuple(dataclasses.replace(draw(task_steps(f"k{j}")), catch=())
                             for j in range(draw(st.integers(1, 2)))))
        fan = Child("x", kid)
        ids += [f"x#{e}>k{j}#1" for j in range(2) for e in (1, 2)]
    catch = (C(("ErrA", "ErrB", "ErrC", "ParallelError", "MapError"), "h1", "err"),) if draw(st.booleans()) else ()
    if catch:
        fan = dataclasses.replace(fan, catch=catch)
    back = draw(st.sampled_from(["s0", "x"]))
    steps: list[Any] = [draw(task_steps("s0")), fan, draw(task_steps("s1")), Tick(), Loop("loop", back, passes, "done"),
                        Succeed("done", draw(st.sampled_from([UNSET, OBSERVE])))]
    if catch:
        steps += [draw(task_steps("h1")), draw(st.sampled_from([Fail("abort", "Abort", "gave up"), Succeed("handled")]))]
    # Make the run fail at the end now and then, so that everything completed is compensated.
    end_badly = draw(st.booleans())
    if end_badly:
        steps[steps.index(next(s for s in steps if isinstance(s, Succeed) and s.name == "done"))] = Fail(
            "done", "Late", "failed at the end")
    return WF("loops", tuple(steps)), draw(behaviours(ids, max_fails=4, max_comp_fails=2)), kind == "child"


@SETTINGS
@given(fanout_loops())
def test_fanouts_run_again_through_a_loop_agree_with_the_oracle(case: tuple[WF, Behaviour, bool]) -> None:
    wf, b, has_child = case
    if has_child:
        expected = oracle(wf, b)
        expected.__dict__["_steps"] = list(_flatten(wf.steps))
        seen = run_on_engine(wf, b)
        compare(expected, seen, engine=True)
        statuses = {k.split("/")[-1]: v.status for k, v in expected.children.items()}
        assert {k.split("/")[-1]: v.status for k, v in seen.engine_instances.items()} == statuses
    else:
        check(wf, b)


# ---------------------------------------------------------------------------------------------
# 4: tolerated_failures at its boundaries, on wide maps of one cheap step


@st.composite
def tolerance_cases(draw: Any) -> tuple[WF, Behaviour]:
    n = draw(st.integers(1, 60))
    if draw(st.booleans()):
        tolerated: int | float = draw(st.sampled_from([k / 100 for k in range(1, 100)] + list(FRACTIONS)))
    else:
        tolerated = draw(st.integers(0, n + 1))
    allowed = tolerated if isinstance(tolerated, int) else max(f for f in range(n + 1) if f / n <= tolerated)
    failures = draw(st.sampled_from(sorted({min(n, max(0, f)) for f in (allowed - 1, allowed, allowed + 1)})))
    failing = draw(st.lists(st.integers(0, n - 1), min_size=failures, max_size=failures, unique=True))
    on_error = draw(st.sampled_from(["wait-all", "fail-fast"]))
    wf = WF("tol", (MapS("m", tuple(range(n)), (T("mx0", comp=True),), on_error, tolerated,
                         1 if on_error == "fail-fast" else None),))
    return wf, Behaviour({(f"m/#{i}/mx0#1", 1): "ErrA" for i in failing})


@settings(SETTINGS, max_examples=80)
@given(tolerance_cases())
def test_tolerated_failures_boundaries_agree_with_the_oracle(case: tuple[WF, Behaviour]) -> None:
    check(*case, in_process=False)


# ---------------------------------------------------------------------------------------------
# 3 + 4: catch, succeed and fail inside branches and map items; fan-outs nested in fan-outs


@st.composite
def lane_steps(draw: Any, prefix: str, depth: int, children: bool = False) -> tuple[tuple[Any, ...], list[str]]:
    """A branch's steps (names start with ``prefix``) and the local execution ids of its tasks."""
    first = draw(task_steps(f"{prefix}a"))
    shape = draw(st.sampled_from(["plain", "catch", "succeed", "fail"] + (["nested"] if depth == 0 else [])
                                 + (["child"] * 6 if children else [])))
    ids = [f"{prefix}a#1"]
    if shape == "child":
        kid = WF(f"kid-{prefix}", tuple(dataclasses.replace(draw(task_steps(f"{prefix}k{j}")), catch=())
                                        for j in range(draw(st.integers(1, 2)))))
        catch = ()
        if draw(st.booleans()):
            catch = (C(tuple(draw(st.lists(st.sampled_from(MATCHERS + ("ChildWorkflowError",)), min_size=1,
                                           max_size=2, unique=True))), f"{prefix}h", None),)
        steps: tuple[Any, ...] = (dataclasses.replace(first, style="step"), Child(f"{prefix}c", kid, catch))
        if catch:
            steps += (Succeed(f"{prefix}ok"), dataclasses.replace(draw(task_steps(f"{prefix}h")), style="step"))
            ids.append(f"{prefix}h#1")
        return steps, ids + [f"{prefix}c#1>{prefix}k{j}#1" for j in range(len(kid.steps))]
    if shape == "plain":
        return (dataclasses.replace(first, style="step"),), ids
    if shape == "succeed":
        if draw(st.booleans()):  # first in its lane: passes the lane's input on
            return (Succeed(f"{prefix}s", draw(st.sampled_from([UNSET, OBSERVE_LANE, OBSERVE]))),), []
        return (dataclasses.replace(first, style="step"),
                Succeed(f"{prefix}s", draw(st.sampled_from([UNSET, OBSERVE_LANE, OBSERVE])))), ids
    if shape == "fail":
        return (dataclasses.replace(first, style="step"), Fail(f"{prefix}f", "Refused", f"{prefix} says no")), ids
    if shape == "catch":
        catch = (C(tuple(draw(st.lists(st.sampled_from(MATCHERS), min_size=1, max_size=3, unique=True))),
                   f"{prefix}h", draw(st.sampled_from([None, f"{prefix}err"]))),)
        handler = draw(task_steps(f"{prefix}h"))
        return (dataclasses.replace(first, style="step", catch=catch),
                Succeed(f"{prefix}ok", draw(st.sampled_from([UNSET, OBSERVE_LANE, OBSERVE]))),
                dataclasses.replace(handler, style="step"),
                Succeed(f"{prefix}handled", draw(st.sampled_from([UNSET, OBSERVE_LANE, OBSERVE])))), ids + [f"{prefix}h#1"]
    inner_kind = draw(st.sampled_from(["par", "map"]))
    inner_steps, inner_ids = draw(lane_steps(f"{prefix}i", 1))
    if inner_kind == "par":
        inner: Any = Par(f"{prefix}p", (("u", inner_steps), ("v", (T(f"{prefix}v", comp=True),))),
                         draw(st.sampled_from(["wait-all", "fail-fast"])))
        ids += [i if "/" in i else f"{prefix}p/u/{i}" for i in inner_ids] + [f"{prefix}p/v/{prefix}v#1"]
    else:
        inner = MapS(f"{prefix}m", (10, 11), inner_steps, "wait-all", draw(st.sampled_from([0, 1])), None)
        ids += [f"{prefix}m/#{k}/{i}" for k in range(2) for i in inner_ids if "/" not in i]
    return (dataclasses.replace(first, style="step"), inner), ids


@st.composite
def rich_fanouts(draw: Any, children: bool = False) -> tuple[WF, Behaviour]:
    ids = ["s0#1", "s1#1", "h1#1"]
    if draw(st.booleans()):
        branches = []
        for b in range(draw(st.integers(1, 2))):
            bsteps, bids = draw(lane_steps(f"b{b}", 0, children))
            branches.append((f"br{b}", bsteps))
            ids += [i if "/" in i else f"p/br{b}/{i}" for i in bids]
        fan: Any = Par("p", tuple(branches), draw(st.sampled_from(["wait-all", "fail-fast"])))
    else:
        bsteps, bids = draw(lane_steps("mi", 0, children))
        n = draw(st.integers(0, 3))
        fan = MapS("m", tuple(range(n)), bsteps, draw(st.sampled_from(["wait-all", "fail-fast"])),
                   draw(st.sampled_from([0, 1, 0.5])), draw(st.sampled_from([None, 1])))
        ids += [f"m/#{k}/{i}" for k in range(n) for i in bids]
    catch = ()
    if draw(st.booleans()):
        catch = (C(tuple(draw(st.lists(st.sampled_from(MATCHERS + ("ParallelError", "MapError", "Refused")),
                                       min_size=1, max_size=3, unique=True))), "h1",
                   draw(st.sampled_from([None, "err"]))),)
        fan = dataclasses.replace(fan, catch=catch)
    end = (Fail("done", "Late", "failed at the end") if draw(st.booleans())  # so that all is undone
           else Succeed("done", draw(st.sampled_from([UNSET, OBSERVE, OBSERVE_LANE]))))
    steps: list[Any] = [draw(task_steps("s0")), fan, draw(task_steps("s1")), end]
    if catch:
        steps += [draw(task_steps("h1")),
                  draw(st.sampled_from([Fail("abort", "Abort", "gave up"), Succeed("handled", OBSERVE_LANE)]))]
    default_retry = draw(st.none() | st.tuples(st.integers(2, 3), st.none() | st.lists(
        st.sampled_from(MATCHERS), min_size=1, max_size=2, unique=True).map(tuple)))
    return (WF("rich", tuple(steps), default_retry=default_retry),
            draw(behaviours(ids, max_fails=5, max_comp_fails=2)))


@SETTINGS
@given(rich_fanouts())
def test_catch_succeed_fail_inside_fanouts_agree_with_the_oracle(case: tuple[WF, Behaviour]) -> None:
    check(*case)


@SETTINGS
@given(rich_fanouts(children=True))
def test_children_inside_fanouts_agree_with_the_oracle(case: tuple[WF, Behaviour]) -> None:
    wf, b = case
    expected = check(wf, b, in_process=False)
    if expected.lanes_open or expected.siblings_open:
        return
    seen = run_on_engine(wf, b)
    statuses = {i.id.split("/", 1)[1]: i.status for i in seen.engine_instances.values()}
    assert statuses == {k: v.status for k, v in expected.children.items()}


# ---------------------------------------------------------------------------------------------
# The same on SQLiteAdapter (a few cases: a file per example)


@settings(SETTINGS, max_examples=25)
@given(st.one_of(linear(), rich_fanouts(children=True), families()))
def test_runs_on_sqlite_agree_with_the_oracle(case: tuple[WF, Behaviour]) -> None:
    import tempfile

    wf, b = case
    expected = oracle(wf, b)
    expected.__dict__["_steps"] = list(_flatten(wf.steps))
    with tempfile.TemporaryDirectory() as tmp:
        seen = run_on_engine(wf, b, adapter=tf.adapters.SQLiteAdapter(str(Path(tmp) / "flows.db")))
    # (SQLite commits in a writer thread, during which MockClock's virtual time runs at real speed)
    compare(expected, seen, engine=True, tol=0.5)


@SETTINGS
@given(linear(), st.sampled_from([0.75, 1.75, 2.75, 4.25, 5.75, 8.25]))  # (never a step's end: no ties)
def test_a_cancel_at_a_fixed_time_agrees_with_the_oracle(case: tuple[WF, Behaviour], at: float) -> None:
    """SPEC 1: "Cancellation and workflow timeout compensate the same way"; SPEC 9: "cancel()
    really stops the running step (its cancel scope), then compensates"."""
    wf, b = case
    expected = oracle(wf, b, cancel_at=at)
    expected.__dict__["_steps"] = list(_flatten(wf.steps))
    seen = run_on_engine(wf, b, cancel_at=at)
    compare(expected, seen, engine=True)


@st.composite
def three_generations(draw: Any) -> tuple[WF, Behaviour]:
    grandkid = WF("grandkid", tuple(dataclasses.replace(draw(task_steps(f"g{j}")), catch=(), dur=0, timeout=None)
                                    for j in range(draw(st.integers(1, 2)))))
    kid = WF("kid", (dataclasses.replace(draw(task_steps("k0")), catch=(), dur=0, timeout=None),
                     Child("gc", grandkid),
                     dataclasses.replace(draw(task_steps("k1")), catch=(), dur=0, timeout=None)))
    end = Fail("done", "Late", "failed at the end") if draw(st.booleans()) else Succeed("done")
    wf = WF("elder", (draw(task_steps("s0")), Child("c", kid), draw(task_steps("s1")), end))
    ids = ["s0#1", "s1#1", "c#1>k0#1", "c#1>k1#1"] + [f"c#1/gc#1>g{j}#1" for j in range(2)]
    return wf, draw(behaviours(ids, max_fails=3, max_comp_fails=2))


@SETTINGS
@given(three_generations())
def test_grandchildren_are_compensated_within_their_parents_agree_with_the_oracle(case: tuple[WF, Behaviour]) -> None:
    """docs/fanout.md, "Nested sagas": "the child's own compensations run, newest first (its own
    completed children included, as units)"."""
    wf, b = case
    expected = oracle(wf, b)
    expected.__dict__["_steps"] = list(_flatten(wf.steps))
    seen = run_on_engine(wf, b)
    compare(expected, seen, engine=True)


def test_a_childs_default_input_is_its_item_or_the_workflow_input() -> None:
    """README: a child step with "no input=: a map item's child gets the item, any other the
    workflow input"; a succeed step first in its lane passes the lane's input on."""
    echo = WF("echo", (Succeed("back"),))
    wf = WF("inputs", (Child("whole", echo), MapS("each", (7, 8), (Child("one", echo),)), Succeed("done", OBSERVE)))
    expected = oracle(wf, Behaviour())
    assert expected.output["steps"]["whole"] == INPUT and expected.output["steps"]["each"] == [7, 8]
    expected.__dict__["_steps"] = list(_flatten(wf.steps))
    compare(expected, run_on_engine(wf, Behaviour()), engine=True)
