"""Scenario runner for durable-waiting property tests (one trio.run per scenario)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine, virtual_wall_clock

TERMINAL = {"completed", "failed", "cancelled", "timed_out", "compensated"}
EPS = 1e-6


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def make_workflows(calls: list[tuple[str, str, float]], wall: list[Any]) -> dict[str, tf.WorkflowDefinition]:
    def after(ctx: Any) -> Any:
        return ctx

    async def job(data: Any) -> str:
        calls.append((data["iid"], "after", wall[0]()))
        return "done"

    wfs = {
        # receive without timeout, then a pass
        "recv": (tf.workflow("recv").receive("r", signal="go").pass_("p", end=True).build()),
        # receive with timeout, caught
        "recv_to": (tf.workflow("recv_to")
                    .receive("r", signal="go", timeout=3.0,
                             catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="expired")])
                    .succeed("ok")
                    .pass_("expired", end=True).build()),
        # receive with short timeout (in memory), uncaught
        "recv_short": (tf.workflow("recv_short").receive("r", signal="go", timeout=0.5).build()),
        # timer then a task
        "timer": (tf.workflow("timer").wait("t", seconds=2.0).task("after", job=job,
                                                                    input=lambda ctx: ctx.input).build()),
        "timer_short": (tf.workflow("timer_short").wait("t", seconds=0.5)
                        .task("after", job=job, input=lambda ctx: ctx.input).build()),
        # receive in a loop via a choice; stops on a payload with stop=True
        "loop": (tf.workflow("loop")
                 .receive("r", signal="go")
                 .choice("c", choices=[tf.when(lambda ctx: ctx.steps["r"]["stop"], next="done")], default="r")
                 .pass_("done", end=True).build()),
        # two receives of different names
        "two": (tf.workflow("two").receive("a", signal="go").receive("b", signal="other", timeout=30.0)
                .build()),
    }
    return wfs


RECEIVES = {  # workflow -> {step: (signal, timeout)}
    "recv": {"r": ("go", None)},
    "recv_to": {"r": ("go", 3.0)},
    "recv_short": {"r": ("go", 0.5)},
    "timer": {},
    "timer_short": {},
    "loop": {"r": ("go", None)},
    "two": {"a": ("go", None), "b": ("other", 30.0)},
}
TIMERS = {"timer": 2.0, "timer_short": 0.5}


@dataclass
class Inst:
    iid: str
    kind: str
    delay: float | None
    started_wall: float
    sent: list[tuple[str, Any, float, int, int]] = field(default_factory=list)  # (name, payload, wall, ev0, ev1)
    maybe: list[int] = field(default_factory=list)
    cancel_maybe: bool = False
    cancel_refused: str | None = None
    waited: list[str] = field(default_factory=list)
    cancel_true: bool = False
    cancel_true_wall: float | None = None
    terminal_seen: str | None = None


class Problem(AssertionError):
    pass


class LaggyAdapter(tf.adapters.MemoryAdapter):
    """Each storage call takes a little (virtual) time, before or after it acts."""

    def __init__(self, lags: list[float]) -> None:
        super().__init__()
        self.lags = lags or [0.0]
        self.k = 0
        self.shield_after = True
        #: A call cancelled before it writes writes nothing.
        self.shield_before = False

    def _lag(self) -> float:
        lag = self.lags[self.k % len(self.lags)]
        self.k += 1
        return lag

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        lag = self._lag()
        if lag > 0:
            with trio.CancelScope(shield=self.shield_before):
                await trio.sleep(lag)
        result = await getattr(tf.adapters.MemoryAdapter, name)(self, *args, **kwargs)
        lag = self._lag()
        if lag > 0:
            # Once made, a write is not taken back and its caller learns of it (as SQLite's
            # writer: a queued call cannot be cancelled): the wait after it is shielded.
            with trio.CancelScope(shield=self.shield_after):
                await trio.sleep(lag)
        return result

    async def checkpoint(self, *a: Any, **k: Any) -> Any:
        return await self._call("checkpoint", *a, **k)

    async def send_signal(self, *a: Any, **k: Any) -> Any:
        return await self._call("send_signal", *a, **k)

    async def signals(self, *a: Any, **k: Any) -> Any:
        return await self._call("signals", *a, **k)

    async def load(self, *a: Any, **k: Any) -> Any:
        return await self._call("load", *a, **k)

    async def due(self, *a: Any, **k: Any) -> Any:
        return await self._call("due", *a, **k)

    async def create(self, *a: Any, **k: Any) -> Any:
        return await self._call("create", *a, **k)

    async def next_wake(self, *a: Any, **k: Any) -> Any:
        return await self._call("next_wake", *a, **k)

    async def resumable(self, *a: Any, **k: Any) -> Any:
        return await self._call("resumable", *a, **k)


async def run_scenario(ops: list[tuple], adapter_factory: Any = None, final_advance: float = 100.0,
                       lags: list[float] | None = None, max_running: int = 10_000) -> list[str]:
    """Run ``ops``; return a list of problems found (empty: all good)."""
    problems: list[str] = []
    calls: list[tuple[str, str, float]] = []
    wall_holder: list[Any] = [virtual_wall_clock()]
    wall = wall_holder[0]
    wfs = make_workflows(calls, wall_holder)
    if adapter_factory is not None:
        adapter = adapter_factory()
    elif lags:
        adapter = LaggyAdapter(lags)
    else:
        adapter = tf.adapters.MemoryAdapter()
    insts: list[Inst] = []
    handler = ErrorLog()
    logger = logging.getLogger("trioflow")
    logger.addHandler(handler)
    counter = [0]
    ev = [0]

    def tick() -> int:
        ev[0] += 1
        return ev[0]

    async def do_signal(engine: Any, inst: Inst, name: str, stop: bool) -> None:
        counter[0] += 1
        payload = {"n": counter[0], "stop": stop}
        t0 = tick()
        try:
            await engine.signal(inst.iid, name, payload)
        except tf.InstanceNotLiveError:
            inst.maybe.append(payload["n"])
            return
        except tf.EngineClosedError:
            inst.maybe.append(payload["n"])
            return
        except Exception as exc:
            inst.maybe.append(payload["n"])
            problems.append(f"signal({inst.iid}) raised {exc!r}")
            return
        inst.sent.append((name, payload, wall(), t0, tick()))

    async def do_cancel(engine: Any, inst: Inst) -> None:
        try:
            before = await engine.get_instance(inst.iid)
            ok = await engine.cancel(inst.iid)
        except tf.EngineClosedError:
            inst.cancel_maybe = True
            return
        except Exception as exc:
            inst.cancel_maybe = True
            problems.append(f"cancel({inst.iid}) raised {exc!r}")
            return
        if ok:
            if not inst.cancel_true:
                inst.cancel_true = True
                inst.cancel_true_wall = wall()
        else:
            try:
                after = await engine.get_instance(inst.iid)
            except tf.EngineClosedError:
                return
            if not inst.cancel_true and not inst.cancel_maybe and after is not None \
                    and after.status not in TERMINAL and before is not None and before.status not in TERMINAL:
                # (may be ending already: checked at the end that it did not go on running)
                inst.cancel_refused = f"{after.status} waiting={after.waiting} at {wall()}"

    async def do_wait(engine: Any, inst: Inst) -> None:
        try:
            done = await engine.wait(inst.iid)
        except tf.EngineClosedError:
            return
        except Exception as exc:
            problems.append(f"background wait({inst.iid}) raised {exc!r}")
            return
        if done.status not in TERMINAL:
            problems.append(f"background wait({inst.iid}) returned {done.status}")
        inst.waited.append(done.status)

    try:
        i = 0
        while True:
            async with trio.open_nursery() as bg:
                async with open_test_engine(adapter=adapter, max_running=max_running) as engine:
                    for wf in wfs.values():
                        engine.register(wf)
                    restarted = False
                    while i < len(ops):
                        op = ops[i]
                        i += 1
                        kind = op[0]
                        background = False
                        if kind == "bg":
                            background = True
                            op = op[1]
                            kind = op[0]
                        if kind == "restart":
                            restarted = True
                            break
                        if kind == "start":
                            _, wname, delay = op
                            iid = f"{wname}-{len(insts)}"
                            kwargs = {} if delay is None else {"delay": delay}
                            started = wall()
                            await engine.start(wname, {"iid": iid}, instance_id=iid, **kwargs)
                            insts.append(Inst(iid, wname, delay, started))
                        elif kind == "signal":
                            _, idx, name, stop = op
                            if not insts:
                                continue
                            inst = insts[idx % len(insts)]
                            if background:
                                bg.start_soon(do_signal, engine, inst, name, stop)
                            else:
                                await do_signal(engine, inst, name, stop)
                        elif kind == "cancel":
                            _, idx = op
                            if not insts:
                                continue
                            inst = insts[idx % len(insts)]
                            if background:
                                inst.cancel_maybe = True  # its answer may come after its effect
                                bg.start_soon(do_cancel, engine, inst)
                            else:
                                await do_cancel(engine, inst)
                        elif kind == "wait":
                            _, idx = op
                            if not insts:
                                continue
                            bg.start_soon(do_wait, engine, insts[idx % len(insts)])
                        elif kind == "resume":
                            try:
                                await engine.resume()
                            except Exception as exc:
                                problems.append(f"resume() raised {exc!r}")
                        elif kind == "sleep":
                            await trio.sleep(op[1])
                        elif kind == "check":
                            for inst in insts:
                                got = await engine.get_instance(inst.iid)
                                assert got is not None
                                if inst.terminal_seen and got.status != inst.terminal_seen:
                                    problems.append(f"{inst.iid} left terminal {inst.terminal_seen} -> {got.status}")
                                if got.status in TERMINAL:
                                    inst.terminal_seen = got.status
                    if restarted:
                        continue
                    # final phase: let background calls finish, then time pass
            # (bg nursery done)
            break
        async with open_test_engine(adapter=adapter, max_running=max_running) as engine:
            for wf in wfs.values():
                engine.register(wf)
            await trio.sleep(final_advance)
            for inst in insts:
                got = await engine.get_instance(inst.iid)
                assert got is not None
                if got.status not in TERMINAL and inst.cancel_refused:
                    problems.append(f"cancel({inst.iid}) returned False while it was {inst.cancel_refused}, "
                                    f"and it still runs: {got.status} waiting={got.waiting}")
                if got.status not in TERMINAL:
                    waits_for_signal = got.waiting is not None and "signal" in got.waiting and \
                        got.waiting.get("timeout") is None
                    if inst.cancel_true:
                        problems.append(f"{inst.iid} cancelled (True) but still {got.status} "
                                        f"waiting={got.waiting}")
                    elif not waits_for_signal:
                        problems.append(f"{inst.iid} still {got.status} after {final_advance}s, "
                                        f"waiting={got.waiting}, current={got.current_step}")
                    else:
                        # waits for a signal: none of that name may be pending
                        pend = await adapter.signals(inst.iid)
                        if any(name == got.waiting["signal"] for _, name, _ in pend):
                            problems.append(f"{inst.iid} waits for {got.waiting['signal']!r} with such a signal "
                                            f"pending: {[(s, n) for s, n, _ in pend]}")
            for inst in insts:
                got = await engine.get_instance(inst.iid)
                if got is not None and got.status not in TERMINAL:
                    await engine.cancel(inst.iid)
            for inst in insts:
                try:
                    with trio.fail_after(10_000):
                        done = await engine.wait(inst.iid)
                except trio.TooSlowError:
                    got = await engine.get_instance(inst.iid)
                    problems.append(f"wait({inst.iid}) never returned: {got and got.status} {got and got.waiting}")
                    continue
                except Exception as exc:
                    problems.append(f"wait({inst.iid}) raised {exc!r}")
                    continue
                got = await engine.get_instance(inst.iid)
                if got is None or got.status != done.status or got.history != done.history:
                    problems.append(f"wait({inst.iid}) {done.status} disagrees with get_instance "
                                    f"{got and got.status}")
                pending = await adapter.signals(inst.iid)
                check_instance(inst, done, pending, calls, problems)
    finally:
        logger.removeHandler(handler)
    for rec in handler.records:
        problems.append(f"ERROR log: {rec.getMessage()}")
    return problems


def check_instance(inst: Inst, done: Any, pending: list, calls: list, problems: list[str]) -> None:
    from trioflow._codec import decode_payload  # type: ignore[attr-defined]

    iid = inst.iid
    if any(w != done.status for w in inst.waited):
        problems.append(f"{iid}: a background wait() returned {inst.waited}, the final one {done.status}")
    if done.status not in TERMINAL:
        problems.append(f"{iid}: wait returned non-terminal {done.status}")
    if inst.cancel_true and done.status not in ("cancelled", "compensated"):
        problems.append(f"{iid}: cancel() returned True but it ended {done.status}")
    receives = RECEIVES[inst.kind]
    received: dict[str, list[Any]] = {}
    for rec in done.history:
        if rec.step_name in receives and rec.status == "completed":
            received.setdefault(receives[rec.step_name][0], []).append(rec.output)
    pend: dict[str, list[Any]] = {}
    for _seq, name, payload in pending:
        pend.setdefault(name, []).append(decode_payload(payload) if isinstance(payload, (bytes, bytearray))
                                         else payload)
    allowed = {p["n"] for _, p, *_ in inst.sent} | set(inst.maybe)
    names = {n for n, *_ in inst.sent} | set(received) | set(pend)
    for name in names:
        sent = [(p["n"], e0, e1) for n, p, _, e0, e1 in inst.sent if n == name]
        seq = [p["n"] if isinstance(p, dict) else p for p in received.get(name, []) + pend.get(name, [])]
        rec_n = [p["n"] if isinstance(p, dict) else p for p in received.get(name, [])]
        pen_n = [p["n"] if isinstance(p, dict) else p for p in pend.get(name, [])]
        desc = f"sent {[s[0] for s in sent]} (maybe {inst.maybe}), received {rec_n}, pending {pen_n}"
        if len(set(seq)) != len(seq):
            problems.append(f"{iid}: signal {name!r} delivered twice: {desc}")
        missing = [n for n, _, _ in sent if n not in seq]
        if missing:
            problems.append(f"{iid}: signal {name!r} lost {missing}: {desc}")
        extra = [n for n in seq if n not in allowed]
        if extra:
            problems.append(f"{iid}: signal {name!r} invented {extra}: {desc}")
        pos = {n: k for k, n in enumerate(seq)}
        for a in sent:
            for b in sent:
                if a[2] < b[1] and a[0] in pos and b[0] in pos and pos[a[0]] > pos[b[0]]:
                    problems.append(f"{iid}: signal {name!r} out of order ({a[0]} sent before {b[0]}): {desc}")
    # receive with timeout: output xor timeout; timeout not early, and only if no signal was there
    for rec in done.history:
        if rec.step_name not in receives:
            continue
        sig, timeout = receives[rec.step_name]
        if rec.status in ("failed", "caught"):
            if rec.error_name == "SignalTimeoutError":
                if timeout is None:
                    problems.append(f"{iid}: {rec.step_name} timed out without a timeout")
                    continue
                if rec.completed_at is not None and rec.started_at is not None and \
                        rec.completed_at - rec.started_at < timeout - 1e-3:
                    problems.append(f"{iid}: {rec.step_name} timed out early "
                                    f"({rec.completed_at - rec.started_at} < {timeout})")
                deadline = (rec.started_at or 0) + timeout
                nrecv = len(received.get(sig, []))
                early = [p for n, p, t, *_ in inst.sent if n == sig and t < deadline - 0.01]
                if len(early) > nrecv and not inst.cancel_true and not inst.cancel_maybe:
                    problems.append(f"{iid}: {rec.step_name} timed out at {deadline} although signal(s) "
                                    f"{[p['n'] for p in early]} were stored before")
            elif rec.error_name not in ("WorkflowCancelledError",):
                problems.append(f"{iid}: {rec.step_name} failed with {rec.error_name}: {rec.cause}")
    # timers
    if inst.kind in TIMERS:
        due = TIMERS[inst.kind]
        waits = [r for r in done.history if r.step_name == "t"]
        if len([r for r in waits if r.status == "completed"]) > 1:
            problems.append(f"{iid}: timer completed {len(waits)} times")
        for r in waits:
            if r.status == "completed" and r.completed_at is not None and r.started_at is not None and \
                    r.completed_at - r.started_at < due - 1e-3:
                problems.append(f"{iid}: timer fired early {r.completed_at - r.started_at} < {due}")
        mine = [c for c in calls if c[0] == iid]
        # (the task may run again after a restart that came before its completion was stored:
        # at-least-once, SPEC §6; not checked)
        tstarts = [r.started_at for r in waits if r.started_at is not None]
        for c in mine:
            if tstarts and c[2] < tstarts[0] + due - 1e-3:
                problems.append(f"{iid}: task after timer ran at {c[2]} before due {tstarts[0] + due}")
        if done.status == "completed" and not mine:
            problems.append(f"{iid}: completed but task never ran")
    # delayed start: first step not before the delay
    if inst.delay and done.history:
        first = min((r.started_at for r in done.history if r.started_at is not None), default=None)
        if first is not None and first < inst.started_wall + inst.delay - 0.01 and not inst.cancel_true:
            problems.append(f"{iid}: first step started at {first - inst.started_wall:.3f} < delay {inst.delay}")
    if done.status == "completed" and inst.cancel_true:
        problems.append(f"{iid}: completed after cancel True")


def run_ops(ops: list[tuple], adapter_factory: Any = None, lags: list[float] | None = None,
            max_running: int = 10_000) -> list[str]:
    return tf.testing.run(run_scenario, ops, adapter_factory, 100.0, lags, max_running)
