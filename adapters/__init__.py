"""Persistence adapters and the snapshot codec."""

from ._memory import MemoryAdapter as MemoryAdapter
from ._protocol import Adapter as Adapter
from ._protocol import InstanceRecord as InstanceRecord
from ._sqlite import DatabaseError as DatabaseError
from ._sqlite import DatabaseLockedError as DatabaseLockedError
from ._sqlite import SQLiteAdapter as SQLiteAdapter
from ._driver import Driver as Driver
from ._driver import DriverError as DriverError
from ._driver import EntityNotFoundError as EntityNotFoundError
from ._driver import UnknownColumnError as UnknownColumnError
from ._driver import UnknownEntityError as UnknownEntityError
from ._memory_driver import MemoryDriver as MemoryDriver
from ._sqlite_driver import SQLiteDriver as SQLiteDriver
