"""The event bus: ``engine.events.on(pattern, cb)`` and ``engine.events.subscribe(pattern)``.

Publishing never waits on a subscriber. Sync callbacks run inline and must be quick; async
callbacks and subscription streams each get a bounded queue drained by their own task, and a
queue that is full drops the event (logged once per subscriber) rather than stall a workflow.
A subscriber that raises is logged and otherwise ignored.

Payloads carry live instance state (a step's output, the workflow input and output), so every
subscriber gets its own copy, made at publish time: a subscriber that edits an event (say, pops
a secret before logging it) changes neither the instance nor what other subscribers see.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import inspect
import logging
import math
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ._callables import check_arguments, generator_kind, is_async
from ._engine_arguments import refuses_unbound_arguments
from ._errors import EngineClosedError, InvalidArgumentError, safe_repr
from ._escapes import goes_on

log = logging.getLogger("trioflow.events")

Event = dict[str, Any]
Callback = Callable[[Event], Any]

#: Events a subscriber may hold before the bus starts dropping for it.
DEFAULT_BUFFER = 10_000


#: Immutable types the copy shares rather than walks (exact types: subclasses may be mutable).
_SHARED: frozenset[type] = frozenset({str, int, float, bool, type(None), bytes})


def _copy(value: Any) -> Any:
    """A copy of ``value`` that shares nothing mutable with it, for one subscriber.

    Payloads are nearly always plain data (what msgpack stores), so dicts, lists and tuples are
    walked by hand, about four times cheaper than ``copy.deepcopy``. Anything else (a value
    that is never stored may be any object) goes to ``copy.deepcopy``; an object even that
    cannot copy is passed as it is, since publishing must never fail a workflow.
    """
    cls = type(value)
    if cls in _SHARED:
        return value
    if cls is dict:
        return {k: _copy(v) for k, v in value.items()}
    if cls is list:
        return [_copy(v) for v in value]
    if cls is tuple:
        return tuple(_copy(v) for v in value)
    return _deepcopy_or_same(value)


def _deepcopy_or_same(value: Any) -> Any:
    try:
        return copy.deepcopy(value)
    except Exception:
        return value


def _copy_payload(payload: Event) -> Event:
    """One subscriber's copy of an event payload (see :func:`_copy`). (A loop: most of its
    values, ids and names, are shared as they are, with no call for each.)"""
    copied: Event = {}
    for k, v in payload.items():
        copied[k] = v if type(v) in _SHARED else _copy_value(v)
    return copied


def _copy_value(value: Any) -> Any:
    try:
        return _copy(value)
    except RecursionError:
        # Nesting too deep for the hand walk, or a cycle: deepcopy's memo copes with cycles.
        return _deepcopy_or_same(value)


class _Subscriber:
    __slots__ = ("match", "callback", "send", "dropped", "dropping", "name")

    def __init__(self, pattern: str, callback: Callback | None, send: trio.MemorySendChannel[Event] | None,
                 name: str = "") -> None:
        self.match = re.compile(fnmatch.translate(pattern)).match
        self.callback = callback
        self.send = send
        #: Events dropped for it in all (its queue full), and whether the last one was: each
        #: run of drops is logged as it begins and as it ends, with its count, so that an
        #: operator learns of every gap in what it was given, not only of the first.
        self.dropped = 0
        self.dropping = 0
        #: How the logs name it: its pattern, and its callback (an async one's) if any.
        self.name = name or f"subscriber of {pattern!r}"

    def dropped_one(self) -> None:
        """Its queue was full: the event is dropped, and a run of drops that begins is logged."""
        self.dropped += 1
        self.dropping += 1
        if self.dropping == 1:
            assert self.send is not None
            log.warning("event %s is too slow (its queue holds %s); dropping events for it (%d dropped in all)",
                        self.name, self.send.statistics().max_buffer_size, self.dropped)

    def caught_up(self) -> None:
        """An event was queued again after a run of drops: the run's count is logged."""
        log.warning("event %s takes events again, after %d dropped", self.name, self.dropping)
        self.dropping = 0


class EventBus:
    """Per-engine publish/subscribe of workflow events (payloads are dicts with an ``event`` key)."""

    def __init__(self, check_caller: Callable[[], None] | None = None) -> None:
        #: Refuses a call from where the bus cannot be used (an engine's: another thread).
        self._check_caller = check_caller
        self._subscribers: list[_Subscriber] = []
        self._routes: dict[str, list[_Subscriber]] = {}
        self._nursery: trio.Nursery | None = None
        #: The queues of the async callbacks, and the send sides of the ``subscribe`` streams
        #: (their callers own the receive sides).
        self._queues: set[trio.MemorySendChannel[Event]] = set()
        self._streams: set[trio.MemorySendChannel[Event]] = set()
        #: The engine has closed: it sends no more events.
        self._closed = False
        #: ``False`` while nobody listens: publishers skip building payloads altogether.
        self.active = False

    def attach(self, nursery: trio.Nursery | None) -> None:
        """Give the bus the nursery its async dispatch tasks live in (``None``: closed)."""
        self._nursery = nursery

    @refuses_unbound_arguments
    def on(self, pattern: str, callback: Callback, *, buffer: int = DEFAULT_BUFFER) -> Callable[[], None]:
        """Call ``callback(event)`` for every event whose name matches ``pattern`` (``*`` globs).

        Returns a function that unsubscribes. Raises :class:`EngineClosedError` once the engine
        has closed (the callback would never be called).
        """
        _check_pattern(pattern)
        _check_buffer(buffer)
        self._check_open()
        if not callable(callback):
            raise InvalidArgumentError(f"on() calls callback(event) for each event: got {safe_repr(callback)}, not a function")
        kind = generator_kind(callback)
        if kind is not None:  # (its generator would never run: the callback would do nothing)
            raise InvalidArgumentError(
                f"on() calls callback(event) for each event: {safe_repr(callback)} is {kind} (it yields); give a"
                " function or an async def")
        # Checked here, not left to each event's call: its TypeError would only be logged, on a
        # logger that prints nothing unless the application configures logging.
        check_arguments("on()", "callback", callback, ("event",), InvalidArgumentError)
        if not is_async(callback):
            remove_plain = self._add(_Subscriber(pattern, callback, None))
            if self._check_caller is None:
                return remove_plain

            def unsubscribe_plain() -> None:
                if not self._closed:  # (closed, it publishes nothing more: any thread may)
                    assert self._check_caller is not None
                    self._check_caller()  # (the engine's thread may be publishing)
                remove_plain()

            return unsubscribe_plain
        if self._nursery is None:
            raise EngineClosedError("async event callbacks need a running engine")
        send, receive = trio.open_memory_channel[Event](buffer)
        self._nursery.start_soon(self._drain, receive, callback)
        self._queues.add(send)
        remove = self._add(_Subscriber(pattern, None, send, f"callback {getattr(callback, '__qualname__', None) or safe_repr(callback)} of {pattern!r}"))

        def unsubscribe() -> None:
            if self._check_caller is not None and not self._closed:
                self._check_caller()  # (it closes the channels the engine's task reads)
            remove()
            self._queues.discard(send)
            send.close()
            receive.close()  # what is queued goes too: no call after this (one running ends)

        return unsubscribe

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError("the engine is closed: it sends no more events")
        if self._check_caller is not None:
            self._check_caller()

    def close(self) -> None:
        """The engine is closing: no more events. Each async callback's task delivers what its
        queue holds, then ends; each ``subscribe`` stream ends once what it holds is read (a
        reader in another task is not left waiting for ever); a later ``on`` or ``subscribe`` is refused."""
        self._closed = True
        for send in (*self._queues, *self._streams):
            send.close()
        self._queues.clear()
        self._streams.clear()

    @refuses_unbound_arguments
    @asynccontextmanager
    async def subscribe(self, pattern: str, *, buffer: int | float = DEFAULT_BUFFER) -> AsyncIterator[trio.MemoryReceiveChannel[Event]]:
        """An async iterator of matching events for the duration of the block; it ends when
        the engine closes or the block is left (either way a reader, in any task, gets what is
        already queued, then its ``async for`` ends). Raises :class:`EngineClosedError` once the
        engine has closed. ``buffer``: how many events wait for the reader (an int >= 1, or
        ``math.inf``) before newer ones are dropped."""
        _check_pattern(pattern)
        _check_buffer(buffer)
        self._check_open()
        send, receive = trio.open_memory_channel[Event](buffer)
        remove = self._add(_Subscriber(pattern, None, send, f"stream of {pattern!r}"))
        self._streams.add(send)
        try:
            yield receive
        finally:
            remove()
            self._streams.discard(send)
            # Only the send side is closed, as at the engine's close: a reader waiting in another
            # task gets EndOfChannel (its ``async for`` ends) once it has read what is queued.
            # Closing the receive side would raise trio.ClosedResourceError in that reader
            # instead; left open, it holds nothing but the queue, which goes with the reader.
            send.close()

    def wants(self, name: str) -> bool:
        """Whether anyone listens to events named ``name``: publishers of events sent at every
        step skip building them otherwise (``active`` says whether anyone listens at all)."""
        if not self.active:
            return False
        # (Its route made by _route only the first time: every step asks, for several names.)
        subscribers = self._routes.get(name)
        return bool(self._route(name) if subscribers is None else subscribers)

    def _route(self, name: str) -> list[_Subscriber]:
        """Make the route of events named ``name`` (asked where ``_routes`` has none)."""
        subscribers = self._routes[name] = [s for s in self._subscribers if s.match(name)]
        return subscribers

    def emit(self, name: str, payload: Event) -> None:
        """Publish one event. Never blocks, never raises.

        Each subscriber gets its own copy of ``payload``, so the caller may pass live state.
        """
        subscribers = self._routes.get(name)  # (as wants() looks it up)
        if subscribers is None:
            subscribers = self._route(name)
        if not subscribers:
            return
        payload["event"] = name
        for sub in subscribers:
            if sub.send is not None:
                try:
                    sub.send.send_nowait(_copy_payload(payload))
                except trio.WouldBlock:
                    sub.dropped_one()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                else:
                    if sub.dropping:
                        sub.caught_up()
            else:
                try:
                    result = sub.callback(_copy_payload(payload))  # type: ignore[misc]
                except BaseException as exc:
                    # (Any the callback raises is its own failure, a BaseException of its own
                    # too; a cancellation, KeyboardInterrupt and SystemExit go on.)
                    if goes_on(exc):
                        raise
                    log.exception("event callback for %r raised; ignored", name)
                    continue
                if result is not None and inspect.iscoroutine(result):
                    # A callback that only returns a coroutine (a lambda around an async
                    # function) cannot be told apart when it subscribes: said, not left unawaited.
                    # (Most return None: no call for those.)
                    result.close()
                    log.error("event callback for %r returned a coroutine, which was not run; subscribe an"
                              " async def (or an object with one as __call__) to have it awaited", name)
                elif result is not None and (inspect.isgenerator(result) or inspect.isasyncgen(result)):
                    # (A generator function behind a wrapper: nothing runs its body.)
                    log.error("event callback for %r returned a generator, which was not run; subscribe a"
                              " function or an async def", name)

    def _add(self, sub: _Subscriber) -> Callable[[], None]:
        self._subscribers.append(sub)
        self._changed()

        def remove() -> None:
            if sub in self._subscribers:
                self._subscribers.remove(sub)
                self._changed()

        return remove

    def _changed(self) -> None:
        self._routes.clear()
        self.active = bool(self._subscribers)

    @staticmethod
    async def _drain(receive: trio.MemoryReceiveChannel[Event], callback: Callback) -> None:
        # A closed receive side is an unsubscribe: the queue is dropped unread.
        with contextlib.suppress(trio.ClosedResourceError):
            async with receive:
                async for event in receive:
                    try:
                        await callback(event)
                    except trio.Cancelled:
                        # The engine closed without waiting for it (see EventBus.close): what
                        # it was given is lost, which must not pass unseen.
                        log.warning("async event callback cut short on %r as the engine closed; %d queued events"
                                    " dropped", event.get("event"), receive.statistics().current_buffer_used)
                        raise
                    except BaseException as exc:
                        if goes_on(exc):
                            raise
                        log.exception("async event callback for %r raised; ignored", event.get("event"))


#: Every event the engine sends.
EVENT_NAMES = frozenset({
    "workflow.started", "workflow.progress", "workflow.completed", "workflow.failed", "workflow.cancelled",
    "workflow.timed_out", "workflow.compensated", "workflow.step.started", "workflow.step.completed",
    "workflow.step.failed", "workflow.step.retry", "workflow.step.caught", "workflow.step.compensated",
    "workflow.step.compensation_failed", "workflow.step.waiting", "workflow.signal.received", "workflow.map.progress",
    "workflow.continued",
})


def _check_buffer(buffer: object) -> None:
    """``buffer`` (how many events wait for a subscriber, or an async callback, before newer
    ones are dropped): an int >= 1 or ``math.inf``, or :class:`InvalidArgumentError`. (0 would
    drop every event that comes while it is not parked waiting for one.)"""
    if not (buffer == math.inf or (isinstance(buffer, int) and not isinstance(buffer, bool) and buffer >= 1)):
        raise InvalidArgumentError(f"buffer must be an int >= 1 or math.inf, got {safe_repr(buffer)}")


def _check_pattern(pattern: object) -> None:
    """An event name pattern (``workflow.*``), or :class:`InvalidArgumentError`; one that no
    event the engine sends matches (a typo: ``workflow.complete``) is logged."""
    if not isinstance(pattern, str) or not pattern:
        swapped = " (the pattern comes first: on(pattern, callback))" if callable(pattern) else ""
        raise InvalidArgumentError(
            f"an event pattern must be a non-empty string such as 'workflow.*', got {safe_repr(pattern)}{swapped}")
    if not any(fnmatch.fnmatchcase(name, pattern) for name in EVENT_NAMES):
        log.warning("no event the engine sends matches %r (events: %s)", pattern, ", ".join(sorted(EVENT_NAMES)))
