"""trioflow: durable workflow orchestration (sagas and state machines) as supervised trio actors.

This module is the public facade; everything is defined in private modules and re-exported.
"""

import logging as _logging
from typing import TYPE_CHECKING as _TYPE_CHECKING

from ._lazy import lazy_exports as _lazy_exports
from ._lazy import public_module as _public_module

__version__ = "0.2.0.dev0"

from ._builder import BranchBuilder as BranchBuilder
from ._builder import HookFunctions as HookFunctions
from ._builder import WorkflowBuilder as WorkflowBuilder
from ._builder import branch as branch
from ._builder import step as step
from ._builder import when as when
from ._builder import workflow as workflow
from ._context import WorkflowContext as WorkflowContext
from ._current import NotInStepError as NotInStepError
from ._current import StepInfo as StepInfo
from ._current import current_step as current_step
from ._definition import Branch as Branch
from ._definition import Catch as Catch
from ._definition import ChildStep as ChildStep
from ._definition import Choice as Choice
from ._definition import ChoiceStep as ChoiceStep
from ._definition import ContinueAsNewStep as ContinueAsNewStep
from ._definition import FailStep as FailStep
from ._definition import Hooks as Hooks
from ._definition import MapStep as MapStep
from ._definition import ParallelStep as ParallelStep
from ._definition import PassStep as PassStep
from ._definition import ReceiveStep as ReceiveStep
from ._definition import SucceedStep as SucceedStep
from ._definition import TaskStep as TaskStep
from ._definition import WaitStep as WaitStep
from ._definition import WorkflowDefinition as WorkflowDefinition
from ._errors import BranchError as BranchError
from ._errors import ChildCompensationError as ChildCompensationError
from ._errors import ChildWorkflowError as ChildWorkflowError
from ._errors import DefinitionError as DefinitionError
from ._errors import DefinitionMismatchError as DefinitionMismatchError
from ._errors import EngineClosedError as EngineClosedError
from ._errors import RecordedError as RecordedError
from ._errors import error_name as error_name
from ._errors import FailStepError as FailStepError
from ._errors import InstanceNotLiveError as InstanceNotLiveError
from ._errors import InstanceStillRunningError as InstanceStillRunningError
from ._errors import InvalidItemsError as InvalidItemsError
from ._errors import ItemError as ItemError
from ._errors import MapError as MapError
from ._errors import NoChoiceMatchedError as NoChoiceMatchedError
from ._errors import ParallelError as ParallelError
from ._errors import SnapshotDecodeError as SnapshotDecodeError
from ._errors import StepError as StepError
from ._errors import CompensationTimeoutError as CompensationTimeoutError
from ._errors import AdapterInUseError as AdapterInUseError
from ._errors import StorageError as StorageError
from ._errors import CheckpointConflictError as CheckpointConflictError
from ._errors import StorageUnavailableError as StorageUnavailableError
from ._errors import SignalTimeoutError as SignalTimeoutError
from ._errors import StepTimeoutError as StepTimeoutError
from ._errors import TrioflowError as TrioflowError
from ._errors import UnencodableValueError as UnencodableValueError
from ._errors import ValueTooLargeError as ValueTooLargeError
from ._errors import UnknownInstanceError as UnknownInstanceError
from ._errors import UnknownJobError as UnknownJobError
from ._errors import UnknownServiceError as UnknownServiceError
from ._errors import UnknownWorkflowError as UnknownWorkflowError
from ._errors import WorkflowCancelledError as WorkflowCancelledError
from ._errors import WorkflowTimeoutError as WorkflowTimeoutError
from ._errors import WrongTrioRunError as WrongTrioRunError
from ._events import EventBus as EventBus
from ._jobs import JobRegistry as JobRegistry
from ._matching import ALL as ALL
from ._retry import Retry as Retry
from ._snapshot import FinishedStatus as FinishedStatus
from ._snapshot import Status as Status
from ._snapshot import StepResult as StepResult
from ._snapshot import StepStatus as StepStatus
from ._snapshot import WorkflowInstance as WorkflowInstance
from ._snapshot import WorkflowMetadata as WorkflowMetadata
from ._snapshot import WorkflowResult as WorkflowResult
from ._errors import InstanceIdConflictError as InstanceIdConflictError
from ._errors import InvalidArgumentError as InvalidArgumentError

if _TYPE_CHECKING:
    from ._engine import Engine as Engine
    from ._engine import open_engine as open_engine
    from ._entity_steps import create_entity_step as create_entity_step
    from ._entity_steps import delete_entity_step as delete_entity_step
    from ._entity_steps import update_entity_step as update_entity_step
    from ._inprocess import execute_workflow as execute_workflow
    from ._inprocess import run_workflow as run_workflow
    from . import adapters as adapters
    from . import testing as testing

# What runs workflows (engine, actors, codec, msgpack), the storage adapters and the entity
# steps (data drivers) load on first use (PEP 562): a module that only defines workflows should
# import fast.
_LAZY = {
    "Engine": "_engine", "open_engine": "_engine", "execute_workflow": "_inprocess",
    "run_workflow": "_inprocess", "create_entity_step": "_entity_steps",
    "update_entity_step": "_entity_steps", "delete_entity_step": "_entity_steps", "adapters": "adapters",
    "testing": "testing",
}


__getattr__, __dir__ = _lazy_exports(__name__, _LAZY, globals())
_public_module(__name__, globals())

# A library's log lines go where the application sends them, and nowhere if it configures no
# logging (not to stderr through Python's last-resort handler).
_logging.getLogger(__name__).addHandler(_logging.NullHandler())
