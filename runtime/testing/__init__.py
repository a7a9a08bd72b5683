"""Tools for testing code built on trioflow, and adapters written for it.

- :func:`open_test_engine` / :func:`run` / the ``trioflow_engine`` pytest fixture: a
  time-skipping engine on trio's ``MockClock``;
- :class:`ScriptedJob` with :func:`returns`, :func:`raises`, :func:`sleeps`, :func:`hangs`:
  jobs that follow a script and record their calls;
- :func:`explore_crashes`: crash at every snapshot write, resume, compare with the clean run;
- :mod:`trioflow.testing.strategies`: hypothesis strategies for workflows and job behaviours;
- :func:`check_persistence_adapter`: the conformance checks every adapter must pass;
- :func:`engine_portal`: a test engine driven from synchronous code (hypothesis's stateful tests).
"""

from ._conformance import check_persistence_adapter as check_persistence_adapter
from ._engine import NotOnMockClockError as NotOnMockClockError
from ._engine import open_test_engine as open_test_engine
from trioflow._virtual_time import virtual_wall_clock as virtual_wall_clock
from ._engine import run as run
from ._scripted import Behaviour as Behaviour
from ._scripted import Call as Call
from ._scripted import Hangs as Hangs
from ._scripted import Raises as Raises
from ._scripted import Returns as Returns
from ._scripted import ScriptedJob as ScriptedJob
from ._scripted import Sleeps as Sleeps
from ._scripted import hangs as hangs
from ._scripted import raises as raises
from ._scripted import returns as returns
from ._scripted import sleeps as sleeps
from ._crashes import CrashDivergenceError as CrashDivergenceError
from ._crashes import CrashPoint as CrashPoint
from ._crashes import CrashReport as CrashReport
from ._crashes import Outcome as Outcome
from ._crashes import explore_crashes as explore_crashes
from ._portal import EnginePortal as EnginePortal
from ._portal import PortalCallStuckError as PortalCallStuckError
from ._portal import PortalOptions as PortalOptions
from ._portal import engine_portal as engine_portal

from trioflow._lazy import declare_all as _declare_all
from trioflow._lazy import public_module as _public_module

_public_module(__name__, globals())
_declare_all(globals())
