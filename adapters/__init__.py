"""Persistence adapters (they store bytes; the codec that makes them is the kernel's) and data
drivers.

The SQLite adapter and the data drivers load on first use (PEP 562): most programs use one
adapter, and ``import trioflow`` should not pay for sqlite3, threads and queues it never uses.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from trioflow._lazy import lazy_exports as _lazy_exports
from trioflow._lazy import public_module as _public_module

from ._memory import MemoryAdapter as MemoryAdapter
from ._protocol import Adapter as Adapter
from ._protocol import HeadLoads as HeadLoads
from ._protocol import KeyedSignals as KeyedSignals
from ._protocol import KeyedSignalsAndLoads as KeyedSignalsAndLoads
from ._protocol import SignalsAndLoads as SignalsAndLoads
from ._protocol import StoredInstance as StoredInstance

if _TYPE_CHECKING:
    from ._driver import Driver as Driver
    from ._driver import DriverError as DriverError
    from ._driver import EntityNotFoundError as EntityNotFoundError
    from ._driver import ForgetsRuns as ForgetsRuns
    from ._driver import RunLedger as RunLedger
    from ._driver import UnknownColumnError as UnknownColumnError
    from ._driver import UnknownEntityError as UnknownEntityError
    from ._memory_driver import MemoryDriver as MemoryDriver
    from ._sqlite import DatabaseError as DatabaseError
    from ._sqlite import DatabaseLockedError as DatabaseLockedError
    from ._sqlite import DatabaseUnavailableError as DatabaseUnavailableError
    from ._sqlite import SQLiteAdapter as SQLiteAdapter
    from ._sqlite_driver import SQLiteDriver as SQLiteDriver

_LAZY = {
    "SQLiteAdapter": "_sqlite", "DatabaseError": "_sqlite", "DatabaseLockedError": "_sqlite",
    "DatabaseUnavailableError": "_sqlite",
    "Driver": "_driver", "DriverError": "_driver", "EntityNotFoundError": "_driver", "ForgetsRuns": "_driver",
    "RunLedger": "_driver",
    "UnknownColumnError": "_driver", "UnknownEntityError": "_driver",
    "MemoryDriver": "_memory_driver", "SQLiteDriver": "_sqlite_driver",
}


__getattr__, __dir__ = _lazy_exports(__name__, _LAZY, globals())
_public_module(__name__, globals())
