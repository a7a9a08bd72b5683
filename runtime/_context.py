"""The context handed to steps, conditions and mappers (``ctx``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ._engine_arguments import refuses_unbound_arguments
from ._errors import InvalidArgumentError, UnknownServiceError, safe_repr
from ._lanes import enclosing_scope, item_of, item_scope, parallel_of
from ._snapshot import (
    InstanceState, StepResult, WorkflowInstance, WorkflowMetadata, metadata_of, outer_lane, to_instance,
)


#: What a map item's context knows of its item: its index, the item, and the seq of the start
#: record of the map execution it belongs to (records before it are earlier executions').
ItemPlace = tuple[int, Any, int]


def check_services(services: object) -> None:
    """Refuse ``services=`` (of an engine or a run) that is not a mapping of names (str):
    ``ctx.resolve`` looks them up by name, and would only fail once a step asked."""
    if services is not None and not isinstance(services, Mapping):
        raise InvalidArgumentError(f"services must be a mapping of names to objects (a dict), got {safe_repr(services)}")
    unnamed = [] if services is None else [key for key in services if not isinstance(key, str)]
    if unnamed:
        raise InvalidArgumentError(
            f"services must be named by str (ctx.resolve takes a name), got the key {safe_repr(unnamed[0])}")


#: Values handed out as they are: nothing can change them in place.
_IMMUTABLE = frozenset({bool, int, float, str, bytes})

#: ``trioflow._codec.as_stored``, once a step first asks for a copy (see :func:`_load_as_stored`).
_as_stored: Callable[[Any, str], Any] | None = None


def _load_as_stored() -> Callable[[Any, str], Any]:
    """Load the codec on first use (a module that only defines workflows imports fast), and
    keep its copier: an import statement run at every copy costs a timer's step a microsecond."""
    global _as_stored
    from ._codec import as_stored

    _as_stored = as_stored
    return as_stored


class _MissingStep(KeyError):
    """``ctx.steps[name]`` for a step with no completed execution: a ``KeyError`` (recorded
    and matched as one) whose message reads as written, where a ``KeyError``'s own ``str()``
    gives its repr, quotes and all, in the recorded cause."""

    def __str__(self) -> str:
        return str(self.args[0])


# Its name (what failures are recorded and matched by) only: pickle finds it by its qualname.
_MissingStep.__name__ = "KeyError"


class StepOutputs(Mapping[str, Any]):
    """``ctx.steps``: the newest completed output of each step by name, a live read-only view.

    In a map item, the item's own executions of the map's branch steps: other items run the
    same steps, and one item never sees another's outputs (which would depend on which item
    got there first), nor those of the item with its index in an earlier execution of the map
    (a loop). In an item of a map that runs in an item itself, the outer item's own too, and
    so on outward. Everywhere else, map items' executions are not shown: the map step's output
    lists them all."""

    __slots__ = ("_state", "_scope", "_since", "_ctx", "_outer")

    def __init__(self, state: InstanceState, scope: str = "", since: int = -1, *,
                 ctx: WorkflowContext | None = None) -> None:
        self._state = state
        #: The key of the map item the view is of (``""``: none), and the seq of the start
        #: record of the map execution it belongs to (its records come after).
        self._scope = scope
        self._since = since
        #: The context whose copies to hand out (see :attr:`WorkflowContext.input`).
        self._ctx = ctx
        #: The items around this one, innermost first, with their since (worked out on first use).
        self._outer: list[tuple[str, int]] | None = None

    def _output(self, found: StepResult) -> Any:
        if self._ctx is None:
            return found.output
        return self._ctx._copy(found.seq, found.output, f"output of step {found.step_name!r}")

    def _scopes(self) -> list[tuple[str, int]]:
        """``(item key, since)`` of this item and of each item it runs in, innermost first."""
        if not self._scope:
            return []
        if self._outer is None:
            self._outer = _enclosing_items(self._state.records, self._scope, self._since)
        return [(self._scope, self._since), *self._outer]

    def _own(self, name: str) -> StepResult | None:
        """The newest execution of ``name`` of this item (in this map execution), else of the
        items around it, innermost first."""
        if not self._scope:
            return None
        own = self._state.latest_in_item(self._scope, name)
        if own is not None and own.seq > self._since:
            return own
        for scope, since in self._scopes()[1:]:
            own = self._state.latest_in_item(scope, name)
            if own is not None and own.seq > since:
                return own
        return None

    def _find(self, name: str) -> StepResult | None:
        own = self._own(name)
        return own if own is not None else self._state.latest.get(name)

    def __getitem__(self, name: str) -> Any:
        found = self._find(name)
        if found is None:
            done = ", ".join(repr(n) for n in self._names()) or "none yet"
            raise _MissingStep(f"no completed step named {name!r} (completed: {done})")
        return self._output(found)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def get(self, name: str, default: Any = None) -> Any:
        found = self._find(name)
        return default if found is None else self._output(found)

    def _names(self) -> list[str]:
        names = list(self._state.latest)
        scopes = self._scopes()
        if scopes:
            since = scopes[-1][1]  # (the outermost item's: every scope's records come after it)
            inside = {scope for scope, _ in scopes}
            names.extend(dict.fromkeys(
                r.step_name for r in self._state.records[since + 1:] if item_scope(r.lane) in inside
                and r.step_name not in self._state.latest and self._own(r.step_name) is r))
        return names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"StepOutputs({dict(self)!r})"

    def stored_value(self) -> dict[str, Any]:
        """What storing the view stores (a step returning ``ctx.steps``, or a value holding
        it): a dict of the outputs as they stand now, read back as a dict."""
        return dict(self)


def _enclosing_items(records: Sequence[StepResult], scope: str, since: int) -> list[tuple[str, int]]:
    """``(item key, since)`` of each map item the item ``scope`` runs in, innermost first:
    the seq of the start record of the map execution each belongs to is that of the newest
    execution of its map in its own scope, before the one inside it started."""
    found = []
    while scope := enclosing_scope(scope):  # the scope the inner map ran in: an item's key
        item = item_of(scope)
        if item is None:
            break
        outer = enclosing_scope(scope)
        since = next((r.seq for r in reversed(records[:since]) if r.status == "started"
                      and r.step_name == item[0] and item_scope(r.lane) == outer), -1)
        found.append((scope, since))
    return found


class WorkflowContext:
    """What a step sees of its run: input, shared data, earlier results, services.

    One context per lane (the main line, one parallel branch, one map item); ``step_index`` and
    ``total_steps`` count within that lane.
    """

    __slots__ = (
        "_state", "_services", "_encodable", "driver", "lane", "step_index", "total_steps",
        "_calling", "_attempt", "_compensating", "_item", "_until", "copies", "_fanouts", "_call_over",
    )

    def __init__(
        self,
        state: InstanceState,
        *,
        lane: str,
        total_steps: int,
        services: Mapping[str, Any],
        driver: Any,
        encodable: Any = None,
        item: ItemPlace | None = None,
        until: int | None = None,
    ) -> None:
        self._state = state
        #: Compensating: the records from this seq on came after the execution compensated.
        self._until = until
        self._services = services
        self._encodable = encodable
        self.driver = driver
        self.lane = lane
        #: The cancel scopes of the fail-fast fan-outs whose branch or item this lane runs in
        #: (or runs inside), set by the actors: what a fail-fast's cancel reaches.
        self._fanouts: tuple[object, ...] = ()
        self.step_index = 0
        self.total_steps = total_steps
        # What ``trioflow.current_step()`` reports: the step whose callable the lane is calling
        # now (``None`` between calls), the attempt, and, while compensating, the execution
        # being compensated. Set by the actors around each call.
        self._calling: str | None = None
        self._attempt = 0
        #: In an engine, the copies handed out during the current step execution (see
        #: :attr:`input`), by what they copy; the lane drops them as each step starts.
        self.copies: dict[object, Any] | None = None
        self._compensating: int | None = None
        self._item = item
        #: A worker thread's call context whose call is over (see :meth:`for_thread_call`).
        self._call_over = False

    def for_thread_call(self) -> WorkflowContext:
        """This lane's context as a plain job's call in a worker thread gets it: the step and
        attempt as they are now, its own copies from here on; :meth:`end_thread_call` once the
        step is done with the call (it returned, or its timeout or a cancel gave its thread
        up). A thread given up runs on, and what it does then is not the step's: it must not
        write the lane's data, nor see its next step's or attempt's copies and step."""
        call = object.__new__(WorkflowContext)
        for name in WorkflowContext.__slots__:
            object.__setattr__(call, name, getattr(self, name))
        return call

    def end_thread_call(self) -> None:
        """The step is done with this worker thread's call (see :meth:`for_thread_call`)."""
        self._calling = None
        self._call_over = True

    def _refuse_if_over(self, what: str) -> None:
        if self._call_over:
            from ._current import NotInStepError

            raise NotInStepError(
                f"{what} in a worker thread whose step is done with it (its timeout or a cancel gave the thread"
                " up): what the thread does now is not the step's")

    @property
    def item(self) -> Any:
        """In a map step's item (its steps, and their compensations): the item it runs for;
        elsewhere ``None``."""
        return None if self._item is None else self._copy("item", self._item[1], "map item")

    @property
    def item_index(self) -> int | None:
        """In a map step's item: the item's index in the list, from 0; elsewhere ``None``."""
        return None if self._item is None else self._item[0]

    @property
    def steps(self) -> StepOutputs:
        """Outputs of the completed steps by name: the newest execution's (a live, read-only
        view; made on access, as most steps never look)."""
        if self._item is None:
            return StepOutputs(self._state, ctx=self)
        return StepOutputs(self._state, item_scope(self.lane), self._item[2], ctx=self)

    @property
    def input(self) -> Any:
        """The workflow input given to ``start`` / ``execute_workflow``. In an engine, the step
        execution's own copy (as are :attr:`steps`' outputs and :attr:`item`: one per step
        execution, the same object each time it asks): a step that changes what it was given in
        place changes nothing stored, and the run goes on as a restarted one would, with what
        storage holds. (``execute_workflow`` stores nothing and hands out the values as given.)"""
        return self._copy("input", self._state.input, "workflow input")

    def _copy(self, key: object, value: Any, what: str) -> Any:
        """``value`` as this step execution's copy of it (see :attr:`input`)."""
        if self._encodable is None or value is None or type(value) in _IMMUTABLE:
            return value
        copies = self.copies
        if copies is None:
            copies = self.copies = {}
        elif key in copies:
            return copies[key]
        copied = copies[key] = (_as_stored or _load_as_stored())(value, what)
        return copied

    @property
    def data(self) -> dict[str, Any]:
        """Shared data between steps (starts as ``with_data``); prefer :meth:`set` to write."""
        return self._state.data

    @refuses_unbound_arguments
    def set(self, key: str, value: Any) -> None:
        """Store ``value`` in the shared data. In a durable engine the value must be
        msgpack-encodable; an unencodable one is refused here, naming the key."""
        self._refuse_if_over(f"ctx.set({key!r})")
        if self._encodable is not None:
            self._encodable(value, f"ctx.set({key!r})")
        self._state.data[key] = value

    @property
    def error(self) -> dict[str, str] | None:
        """The failure a catch routed this lane past most recently, as
        ``{"error": name, "cause": message}`` (``None``: none was caught in this lane)."""
        # Only this execution of the map or parallel step the lane runs in counts: its lane key
        # is reused by the same item or branch in a later execution (a loop). A parallel step
        # running has no record yet: its newest is of the execution before. So has every
        # parallel step around it, and one of those may have ended where the inner one never
        # did (cancelled by an outer fail-fast, then run again through a catch).
        records = self._state.records
        end = len(records) if self._until is None else self._until
        parallels = self._enclosing_parallels()
        since = -1 if self._item is None else self._item[2]
        scope = item_scope(self.lane)  # (the enclosing parallels' too: they run in this item, or in none)
        for seq in range(end - 1, since, -1):
            record = records[seq]
            if record.step_name in parallels and item_scope(record.lane) == scope:
                break  # an execution before this one (not one in another map item)
            if record.lane == self.lane and record.status == "caught":
                output: dict[str, str] = record.output
                return self._copy(record.seq, output, "the caught error")  # type: ignore[no-any-return]
        return None

    def _enclosing_parallels(self) -> frozenset[str]:
        """The parallel step whose branch this lane is, the one whose branch runs that one, and
        so on out to the main line or the map item they run in."""
        names = []
        lane: str | None = self.lane
        while lane is not None and (parallel := parallel_of(lane)) is not None:
            names.append(parallel)
            outer = outer_lane(self._state, lane)
            lane = None if outer is None else outer[0]
        return frozenset(names)

    @refuses_unbound_arguments
    def get(self, key: str, default: Any = None) -> Any:
        """Read the shared data (``default`` when unset)."""
        return self._state.data.get(key, default)

    @refuses_unbound_arguments
    def get_step_result(self, name: str) -> Any:
        """The output of a completed step, or ``None``."""
        return self.steps.get(name)

    @property
    def metadata(self) -> WorkflowMetadata:
        """The run's identity: instance id, workflow name, start time."""
        return metadata_of(self._state)

    @property
    def instance(self) -> WorkflowInstance:
        """The instance as it stands now (a view; do not mutate)."""
        return to_instance(self._state)

    @refuses_unbound_arguments
    def resolve(self, name: str) -> Any:
        """A service given to the engine or to ``execute_workflow(services=...)``."""
        try:
            return self._services[name]
        except KeyError:
            known = ", ".join(sorted(self._services)) or "none"
            raise UnknownServiceError(f"no service named {name!r} (services given: {known})") from None
