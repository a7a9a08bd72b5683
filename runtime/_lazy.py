"""Package facades: lazy re-exports (PEP 562: a name is imported on first access), and public
names that report the facade as their module."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Mapping
from typing import Any, ForwardRef


def lazy_exports(
    package: str, names: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``names`` maps each lazily exported name to
    the submodule defining it (a name mapped to itself is that submodule); a name, once
    loaded, is stored in ``namespace``."""

    def __getattr__(name: str) -> Any:
        if name in names:
            module = importlib.import_module(f"{package}.{names[name]}")
            value = module if names[name] == name else getattr(module, name)
            namespace[name] = value
            public_module(package, {name: value})
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted([*namespace, *names])

    # (Not the testing kit: a star import would load it, with the test tools it needs.)
    declare_all(namespace, [name for name in names if name != "testing"])
    return __getattr__, __dir__


def declare_all(namespace: dict[str, Any], lazy: Collection[str] = ()) -> None:
    """Give a facade its ``__all__``: its public names, ``lazy`` ones included. A checker takes
    every ``X as X`` import (those under ``TYPE_CHECKING`` too) as exported, but without
    ``__all__`` a star import copies only what is loaded, not ``open_engine``."""
    namespace["__all__"] = sorted({*(name for name in namespace if not name.startswith("_")), *lazy})


def public_module(package: str, namespace: Mapping[str, Any]) -> None:
    """Make the classes and functions ``package`` re-exports from its private modules report
    ``package`` as their ``__module__`` (as trio does): reprs, tracebacks and docs then name the
    public path (``trioflow.DefinitionError``), not where the code happens to live."""
    for name, value in namespace.items():
        if name.startswith("_") or not (isinstance(value, type) or callable(value) and hasattr(value, "__code__")):
            continue
        module = getattr(value, "__module__", None)
        if isinstance(module, str) and module.startswith(f"{package}._"):
            if isinstance(value, type) and (annotations := value.__dict__.get("__annotations__")):
                # A class's annotations (text, ``from __future__ import annotations``) are read
                # in the module it names (``typing.get_type_hints``, attrs, cattrs): the facade
                # has none of the names they use. Each is read where it was written instead,
                # when asked (a ``ForwardRef``: about a millisecond at import for them all; the
                # text is compiled, not run).
                value.__annotations__ = {
                    field: ForwardRef(hint, is_argument=False, is_class=True, module=module)
                    if isinstance(hint, str) else hint for field, hint in annotations.items()
                }
            value.__module__ = package
