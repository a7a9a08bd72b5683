"""A test engine driven from synchronous code, for hypothesis's stateful tests.

``RuleBasedStateMachine`` rules are plain functions, and the machine runs no trio. The portal
runs a test engine in a trio run of its own, in a background thread, on a ``MockClock`` that
moves only when :meth:`EnginePortal.advance` says: between two rules nothing happens, and
every call returns once the engine has done all it can at that virtual instant, so a rule sees
the same outcome whatever the threads' timing.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal, TypedDict, TypeVar, Unpack, overload

import trio
import trio.testing

from trioflow._durations import Seconds, virtual_seconds
from trioflow._engine import Engine, open_engine
from trioflow._engine_arguments import refuses_unbound_arguments
from trioflow._errors import EngineClosedError, InvalidArgumentError, TrioflowError, safe_repr
from trioflow._escapes import raise_keeping_context
from trioflow._virtual_time import hold_still, let_jump, threads_finished
from trioflow.adapters._protocol import Adapter

from trioflow.adapters._memory import MemoryAdapter

from ._engine import open_test_engine, refuse_unknown_options

T = TypeVar("T")

#: How far past its end an ``advance`` still runs what falls due: a durable due time is kept
#: on the wall clock (Unix seconds, a float of about 1e9), which rounds it by up to a few
#: tenths of a microsecond, and instances created in one virtual instant have creation (and
#: start) times a float step (about 2.4e-7 s) apart each, to keep them in creation order: their
#: workflow timeouts with them. A tenth of a millisecond covers some 400 of those.
DUE_SLACK = 1e-4


class PortalOptions(TypedDict, total=False):
    """``open_engine``'s options, as :func:`engine_portal` takes them (for type checkers: a
    misspelt one is an error where it is written). ``threads`` only ``False``: the portal
    runs plain ``def`` jobs inline."""

    adapter: Adapter | None
    max_running: int
    services: Mapping[str, Any] | None
    driver: Any
    resume: bool
    threads: Literal[False]
    storage_retry_for: Seconds
    clock: Callable[[], float] | None
    retain_finished: Seconds | None


if set(PortalOptions.__annotations__) != set(inspect.signature(open_engine).parameters):  # pragma: no cover
    raise ImportError("open_engine's options changed: update PortalOptions to match")


class PortalCallStuckError(TrioflowError):
    """A function given to :meth:`EnginePortal.call` waits for what cannot happen while
    virtual time stands still (a timer, a sleep, an instance's end that waits for one), or for
    work in another thread, which the portal cannot tell from that."""


class _Run:
    """The engine's trio run in its background thread, as the caller's thread sees it."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.thread: threading.Thread | None = None
        self.failed: BaseException | None = None
        self.stop: trio.Event | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        #: Set by :meth:`EnginePortal.restart`: the virtual time the next engine opens at, and
        #: the event set once it has (``None``: the block is left, no engine follows).
        self.reopens_at = 0.0
        self.reopened: trio.Event | None = None
        #: Whether the caller has left the ``with`` block (which raised what the run raised).
        self.left = False

    def ended_with(self) -> BaseException | None:
        """Once the run has ended (waited for, briefly), what it raised."""
        assert self.thread is not None
        self.thread.join(10)
        return self.failed


class EnginePortal:
    """A test engine in a trio run of its own (see :func:`engine_portal`)."""

    def __init__(self, run: _Run, clock: trio.testing.MockClock, engine: Engine) -> None:
        self._run = run
        self._clock = clock
        self._engine = engine
        #: Held by a restart and by the block's exit, each done in turn; a call waits for them.
        self._turns = trio.Lock()

    # (Coroutine, not Awaitable: with it a checker gives a lambda's call its result's type;
    # with Awaitable both overloads fit a lambda and it gives up, with Any.)
    @overload
    def call(self, fn: Callable[[Engine], Coroutine[Any, Any, T]]) -> T: ...

    @overload
    def call(self, fn: Callable[[Engine], T]) -> T: ...

    @refuses_unbound_arguments
    def call(self, fn: Callable[[Engine], Any]) -> Any:
        """``fn(engine)``, awaited if it is an ``async`` function, in the engine's trio run
        (``lambda e: e.start("order", data)``); its result, or the exception it raised. Returns,
        or raises, once the engine has done all it can at that virtual instant (what the call
        started has run as far as it can without time moving on). A function that waits for
        what needs time to move (an instance's end that waits for a timer) raises
        :class:`PortalCallStuckError`: :meth:`advance` moves time."""
        return self._in_run(self._settled, fn)

    @refuses_unbound_arguments
    def advance(self, seconds: Seconds) -> None:
        """Move virtual time ``seconds`` (a number or a ``timedelta``) on, from one deadline to the next, running all that
        falls due on the way in order (timers, retry delays, timeouts), each at its own time
        (to a tenth of a millisecond: see :data:`DUE_SLACK`)."""
        self._in_run(self._advance, virtual_seconds(seconds, "advance"))

    @refuses_unbound_arguments
    def restart(self, downtime: Seconds = 0.0) -> None:
        """Close the engine and open another with the same options on the same adapter, as a
        process that stops and starts again: runs stop where they stand (a step cut short runs
        again), the new engine runs ``setup`` (see :func:`engine_portal`) and resumes what is
        stored. ``downtime``: seconds of virtual time that pass while no engine runs (a timer
        that fell due meanwhile fires as the new engine takes it up). Returns once the new
        engine has done all it can at that instant."""
        self._in_run(self._restart, virtual_seconds(downtime, "restart"))

    @property
    def now(self) -> float:
        """The engine's virtual time (trio's clock), in seconds."""
        return self._in_run(self._now)

    def _in_run(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return trio.from_thread.run(afn, *args, trio_token=self._run.token)
        except (trio.RunFinishedError, trio.Cancelled):
            # The run ended under the call (a step raised SystemExit, say): what it raised. (Not
            # after the block, which raised it already: the engine is closed then.)
            failed = self._run.ended_with()
            if failed is None or self._run.left:
                # (Ended as its block did: called after it, the engine is closed, as README says.)
                raise EngineClosedError("the engine_portal's block has ended: its engine is closed") from None
        # Raised out here, not in the handler, keeping the context it was raised in (Python would
        # make trio's RunFinishedError, or what the caller handles, its context, hiding the one
        # its step handled).
        raise_keeping_context(failed)

    async def _now(self) -> float:
        return trio.current_time()

    async def _settled(self, fn: Callable[[Engine], Awaitable[T] | T]) -> T:
        stuck = finished = False
        error: BaseException | None = None
        result: Any = None
        async with self._turns:  # (a restart under way from another thread: its engine, once open)
            engine = self._engine
        try:
            async with trio.open_nursery() as nursery:
                async def watch() -> None:
                    # Everything settled while the call still waits: only time could move it.
                    nonlocal stuck
                    await self._settle()
                    stuck = True
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                try:
                    result = fn(engine)
                    if inspect.isawaitable(result):
                        result = await result
                except BaseException as exc:  # (raised below, once the engine has settled)
                    error = exc
                nursery.cancel_scope.cancel()
            finished = True
        finally:
            try:
                await self._settle()
            except trio.Cancelled:
                # The run ends under the call, its block left meanwhile (from another thread):
                # what the function did is done, and its outcome stands. (Not "closed": a
                # caller told so would do it again, a signal sent twice.)
                if not finished or stuck:
                    raise
        if stuck:
            raise PortalCallStuckError(
                f"EnginePortal.call({safe_repr(fn)}) waits for what cannot happen while virtual time stands"
                " still (a timer, a sleep, an instance's end that waits for one): advance() moves time; call()"
                " what can finish now (start, signal, get_instance, cancel). Or it waits for work in a thread"
                " of its own (a step's trio.to_thread), which a portal cannot see")
        if error is not None:
            raise error
        return result  # type: ignore[no-any-return]

    async def _restart(self, downtime: float) -> None:
        async with self._turns:  # (two threads' restarts: one after the other, both return)
            run = self._run
            if run.left:
                raise EngineClosedError("the engine_portal's block has ended: its engine is closed")
            assert run.stop is not None
            reopened = run.reopened = trio.Event()
            run.reopens_at = trio.current_time() + downtime
            run.stop.set()
            await reopened.wait()
            await self._settle()

    async def _leave(self) -> None:
        """The block is left: the engine closes, and no other opens (a restart under way from
        another thread first ends; one asked after this is refused)."""
        async with self._turns:
            run = self._run
            run.left = True
            run.reopened = None
            assert run.stop is not None
            run.stop.set()

    async def _settle(self) -> None:
        """Return once every other task is blocked and no storage thread works for one: a task
        parked on a SQLiteAdapter's writer looks blocked to trio, but its write will wake it."""
        while True:
            await trio.testing.wait_all_tasks_blocked()
            if not await threads_finished(self._clock):
                return

    async def _advance(self, seconds: float) -> None:
        end = trio.current_time() + seconds
        while True:
            await self._settle()
            # (Settled: nothing is due now, so the next deadline lies ahead, or nowhere.)
            now = trio.current_time()
            to_next = trio.lowlevel.current_statistics().seconds_to_next_deadline
            if now + to_next > end + DUE_SLACK:
                self._clock.jump(max(0.0, end - now))
                await self._settle()
                return
            self._clock.jump(to_next)


@refuses_unbound_arguments
@contextmanager
def engine_portal(
    setup: Callable[[Engine], object] | None = None, **engine_options: Unpack[PortalOptions],
) -> Iterator[EnginePortal]:
    """A test engine (``open_test_engine(**engine_options)``: a fresh ``MemoryAdapter`` and
    plain ``def`` jobs inline unless given) in a trio run of its own, in a background thread,
    driven through the :class:`EnginePortal` it gives; leaving the block closes the engine and
    ends the run (raising what the run raised). ``setup(engine)`` (awaited if ``async``) runs
    each time an engine opens, before any call, as a program's start-up code would: register
    the workflows and jobs there, and :meth:`EnginePortal.restart` needs nothing more. Virtual time stands still until
    :meth:`EnginePortal.advance` moves it. For synchronous test code: hypothesis's
    ``RuleBasedStateMachine``, whose rules are plain functions; in a trio run, use
    ``open_test_engine``. A ``SQLiteAdapter``'s writes (in its writer thread) are waited for,
    and virtual time stands still while they commit. Work in threads of the steps' own
    (``trio.to_thread``) is not waited for: keep the portal's jobs in the trio thread
    (``threads=True`` is refused)."""
    if setup is not None and not callable(setup):
        raise InvalidArgumentError(f"engine_portal(): setup must be a function of the engine or None, got {safe_repr(setup)}")
    if trio.lowlevel.in_trio_run():
        raise InvalidArgumentError(
            "engine_portal() is for synchronous code (hypothesis's stateful tests): in a trio run, use"
            " open_test_engine() or the trioflow_engine fixture")
    refuse_unknown_options(dict(engine_options), "engine_portal()", own=("setup",))
    if engine_options.get("threads"):
        raise InvalidArgumentError(
            "engine_portal(threads=True): jobs in worker threads are not waited for by the portal, and move"
            " virtual time while they run; its engine runs plain def jobs inline")
    # One adapter for every engine of the block: a restart finds what the last one stored.
    engine_options.setdefault("adapter", MemoryAdapter())
    run = _Run()
    handed: list[EnginePortal] = []

    async def main() -> None:
        clock = trio.lowlevel.current_clock()
        assert isinstance(clock, trio.testing.MockClock)
        run.token = trio.lowlevel.current_trio_token()
        try:
            while True:
                # Held before it opens: runs it resumes must not leap time on while it does.
                hold_still(clock)
                async with open_test_engine(**engine_options) as engine:
                    if setup is not None:
                        done = setup(engine)
                        if inspect.isawaitable(done):
                            await done
                    run.stop = trio.Event()
                    if handed:
                        handed[0]._engine = engine
                    else:
                        handed.append(EnginePortal(run, clock, engine))
                        # Opened on storage with work in it (a file from a run before), it has
                        # done all it can at this instant before the first call, as a restart has.
                        await handed[0]._settle()
                    if run.reopened is not None:
                        run.reopened.set()
                    run.ready.set()
                    await run.stop.wait()
                    # Closing, the engine gives hooks and async callbacks time to finish: time moves.
                    let_jump(clock)
                if run.reopened is None:
                    return
                # (Less if closing took virtual time: hooks or callbacks that slept.)
                clock.jump(max(0.0, run.reopens_at - trio.current_time()))
        finally:
            run.ready.set()  # (an engine that failed to open: the caller learns why below)

    def thread() -> None:
        try:
            trio.run(main, clock=trio.testing.MockClock())
        except BaseException as exc:  # handed to the caller's thread
            run.failed = exc
            run.ready.set()

    run.thread = threading.Thread(target=thread, name="trioflow engine portal", daemon=True)
    run.thread.start()
    run.ready.wait()
    if not handed:
        run.thread.join()
        raise run.failed if run.failed is not None else RuntimeError(
            "engine_portal: the engine's trio run ended before it opened")
    try:
        yield handed[0]
    finally:
        if run.thread.is_alive():
            try:
                # In the run's own thread, in turn with restarts (no engine follows).
                trio.from_thread.run(handed[0]._leave, trio_token=run.token)
            except (trio.RunFinishedError, trio.Cancelled):
                pass  # (it ended meanwhile)
        run.left = True
        run.thread.join()
        if run.failed is not None:
            raise run.failed
