"""A one-shot flag to wait on, lighter than ``trio.Event`` where thousands of tasks wait at once."""

from __future__ import annotations

from collections.abc import Awaitable

import trio


class Flag:
    """``trio.Event``'s ``set``, ``is_set`` and ``wait``, for what many tasks in flight each wait
    on (a run's end, a lane's signal or child's end notice, a checkpoint shared by lanes): the
    first waiter parks in a slot of its own, aborted by the flag itself, where ``Event.wait``
    makes a coroutine, a closure and two cells for each waiter and the event holds a set, all
    walked by the cyclic collector for as long as the task waits."""

    __slots__ = ("_set", "_first", "_more")

    def __init__(self) -> None:
        self._set = False
        self._first: trio.lowlevel.Task | None = None
        self._more: list[trio.lowlevel.Task] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        """Wake every waiter; later waits return at once (set once for good)."""
        if self._set:
            return
        self._set = True
        if self._first is not None:
            trio.lowlevel.reschedule(self._first)
            self._first = None
        if self._more is not None:
            for task in self._more:
                trio.lowlevel.reschedule(task)
            self._more = None

    def wait(self) -> Awaitable[None]:
        """Wait until :meth:`set` (await what this returns: a plain function, no coroutine frame
        of its own while the task waits); a checkpoint if it is set already."""
        if self._set:
            return trio.lowlevel.checkpoint()
        task = trio.lowlevel.current_task()
        if self._first is None:
            self._first = task
            # The flag is the abort function: a bound method would be one more object per
            # waiting task for the cyclic collector to walk.
            return trio.lowlevel.wait_task_rescheduled(self)
        if self._more is None:
            self._more = []
        waiters = self._more
        waiters.append(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            waiters.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        return trio.lowlevel.wait_task_rescheduled(abort)

    def wait_shielded(self) -> Awaitable[None]:
        """:meth:`wait` as if in a cancel scope that shields it, without the scope (entering and
        leaving one costs some fifty Python calls): a cancel does not end the wait, which goes
        on until :meth:`set`, and the caller's next checkpoint delivers it, as one after the
        shield's scope would (trio's own uncancellable waits say so with ``Abort.FAILED``)."""
        if self._set:
            return trio.lowlevel.cancel_shielded_checkpoint()
        task = trio.lowlevel.current_task()
        if self._first is None:
            self._first = task
        else:
            if self._more is None:
                self._more = []
            self._more.append(task)  # (never taken out: nothing aborts this wait)
        return trio.lowlevel.wait_task_rescheduled(_refuse_abort)

    def __call__(self, _: object) -> trio.lowlevel.Abort:
        """Abort the first waiter's wait (trio calls this as it is cancelled)."""
        self._first = None
        return trio.lowlevel.Abort.SUCCEEDED


def _refuse_abort(_: object) -> trio.lowlevel.Abort:
    """The abort function of :meth:`Flag.wait_shielded`: the wait cannot be cancelled."""
    return trio.lowlevel.Abort.FAILED
