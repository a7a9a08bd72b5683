"""Which errors a retry policy retries and a catcher catches: one kind of matcher, one precedence.

A matcher is an exception type (``isinstance``), a string (the error's name, or a fragment of
its message), a predicate (``predicate(error) -> bool``), or :data:`ALL`. They are tried in that
order whatever order they are given in, so a predicate that raises is never reached when a type
or a name matched already.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Union, final

from ._callables import check_arguments, not_plain, plain_result
from ._errors import DefinitionError, RecordedError, StorageError, error_message, error_name, wrapped_errors


@final
class _All:
    """The type of :data:`ALL`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "trioflow.ALL"


#: Matches every error except trioflow's own definition and storage errors, which no workflow
#: should route around (Amazon States Language's ``States.ALL``).
ALL = _All()

#: What Amazon States Language's own error names begin with (``States.Timeout``): refused as
#: matchers and as a fail step's error, as ASL keeps it for its own.
ASL_PREFIX = "States."

ErrorMatcher = Union[type[BaseException], str, Callable[[BaseException], bool], _All]


def matcher_tuple(value: object, label: str) -> tuple[ErrorMatcher, ...]:
    """``value`` (one matcher or a list of them) as a tuple; anything else is a
    :class:`DefinitionError` naming ``label``."""
    if isinstance(value, (str, type, _All)) or callable(value):
        value = (value,)
    # (Any sequence: a module's shared list or tuple, typed as a sequence for checkers, which
    # take a ``list[type[OSError]]`` for no ``list[ErrorMatcher]``.)
    if not isinstance(value, Sequence) or isinstance(value, (bytes, bytearray)):
        raise DefinitionError(f"{label} must be a type, string, predicate or a list of them, got {value!r}")
    items: tuple[ErrorMatcher, ...] = tuple(value)
    for item in items:
        # A class is matched with ``isinstance``, never called as a predicate, so one that is
        # not an exception class (``int``) could never match anything.
        valid = (issubclass(item, BaseException) if isinstance(item, type)
                 else isinstance(item, (str, _All)) or callable(item))
        if not valid:
            raise DefinitionError(f"{label} items must be exception types, strings or predicates, got {item!r}")
        if item == "" or item == "States.ALL":
            # A string matches a fragment of the message too: "" would match every error, more
            # than ALL does (trioflow's own definition and storage errors included); and no
            # error is named "States.ALL" (Amazon States Language's), whose meaning is ALL's.
            raise DefinitionError(f"{label} items must not be {item!r} (use trioflow.ALL to match every error)")
        if isinstance(item, str) and item.startswith(ASL_PREFIX):
            # Amazon States Language's other names: no Python error is named so (nor may a fail
            # step's error be), and a ported catcher or retry policy would silently never match.
            raise DefinitionError(
                f"{label} items must not be {item!r}, an Amazon States Language name that no error here has:"
                " use trioflow.StepTimeoutError (and trioflow.SignalTimeoutError) for States.Timeout, and the"
                " errors' own types or names for States.TaskFailed (trioflow.ALL matches timeouts too)")
        kind = not_plain(item) if callable(item) and not isinstance(item, (type, _All)) else None
        if kind is not None:
            # Called without being awaited, it would give a coroutine (or, a generator function,
            # a generator), which is true: a match.
            raise DefinitionError(f"{label} predicates must be plain functions, not async def nor generators:"
                                  f" got {item!r}, {kind}")
        if callable(item) and not isinstance(item, (type, _All)):
            check_arguments(label, "predicate", item, ("error",))
    return items


def catches_all(items: tuple[ErrorMatcher, ...]) -> bool:
    """Whether ``items`` hold :data:`ALL` (they then match every error a workflow may route)."""
    return any(isinstance(i, _All) for i in items)


def matches(items: tuple[ErrorMatcher, ...], error: BaseException) -> bool:
    """Whether any of ``items`` matches ``error`` (for a failed parallel branch, its own error)."""
    chain = wrapped_errors(error)
    root = chain[-1]
    types = tuple(i for i in items if isinstance(i, type))
    # (A failure known from its record is matched by the class it names, below, not as the
    # RecordedError, a TrioflowError, that carries it: a catch of TrioflowError, or Exception,
    # must not take a recorded ConnectionError, or GeneratorExit, that it would not take live.)
    live = chain if not isinstance(root, RecordedError) else chain[:-1]
    if types and any(isinstance(e, types) for e in live):
        return True
    raised_as = root.raised_as if isinstance(root, RecordedError) else None
    # A failure known from its record (before a restart, or a child's) is matched by the class it
    # names; not a fail step's, whose name is the workflow's own text ("KeyError" there names no
    # class), and which is matched, live as recorded, by the class the step raised.
    if types and isinstance(root, RecordedError) and (
            (not root.named_by_workflow and any(_names_a_subclass(t, root.error_name) for t in types))
            or (raised_as and issubclass(raised_as, types))):
        return True
    strings = [i for i in items if isinstance(i, str)]
    if strings:
        # The wrappers' own names match too (a child's failure: "ChildWorkflowError" as well
        # as the child's own error; a map item's: "ItemError" too), as their types do.
        names = (error_name(error), *(type(e).__name__ for e in live), *((raised_as.__name__,) if raised_as else ()))
        cause = error_message(error)
        if any(i in names or i in cause for i in strings):
            return True
    if any(isinstance(i, _All) for i in items) and not _engines_own(error):
        return True
    return any(not isinstance(i, (str, type, _All)) and plain_result(i, root) for i in items)


def _engines_own(error: BaseException) -> bool:
    """Whether ``error`` is, wraps, or (a wait-all parallel's or a map's group) holds one of
    trioflow's own definition or storage errors, which :data:`ALL` does not match."""
    for e in wrapped_errors(error):
        if isinstance(e, (DefinitionError, StorageError)):
            return True
        if isinstance(e, RecordedError) and not e.named_by_workflow and _named_engines_own(e.error_name):
            # Known by its name only: a child's, or one recorded before a restart. (A fail
            # step's name is the workflow's own text, whatever it reads like.)
            return True
        if isinstance(e, BaseExceptionGroup) and any(_engines_own(inner) for inner in e.exceptions):
            return True
    return False


def _named_engines_own(name: str) -> bool:
    """Whether ``name`` is the name of trioflow's own definition or storage errors and of no
    other exception class loaded in this process (``sqlite3.DatabaseError`` shares a name with
    one of them: a recorded failure of that name may be a job's, which ``ALL`` matches)."""
    named = _subclasses_named(BaseException, name)
    return bool(named) and all(issubclass(cls, (DefinitionError, StorageError)) for cls in named)


def _names_a_subclass(kind: type[BaseException], name: str) -> bool:
    """Whether ``kind`` or one of its subclasses (loaded in this process) is called ``name``."""
    return bool(_subclasses_named(kind, name))


def _subclasses_named(kind: type[BaseException], name: str) -> list[type[BaseException]]:
    """``kind`` and its subclasses (loaded in this process) called ``name``."""
    found = []
    seen: set[type[BaseException]] = set()
    todo: list[type[BaseException]] = [kind]
    while todo:
        cls = todo.pop()
        if cls.__name__ == name:
            found.append(cls)
        seen.add(cls)
        subclasses: list[type[BaseException]] = cls.__subclasses__()
        todo.extend(sub for sub in subclasses if sub not in seen)
    return found
