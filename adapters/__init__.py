"""Persistence adapters and the snapshot codec."""

from ._memory import MemoryAdapter as MemoryAdapter
from ._protocol import Adapter as Adapter
from ._protocol import InstanceRecord as InstanceRecord
from ._sqlite import DatabaseError as DatabaseError
from ._sqlite import DatabaseLockedError as DatabaseLockedError
from ._sqlite import SQLiteAdapter as SQLiteAdapter
