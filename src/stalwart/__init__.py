"""Stalwart: durable execution for Python.

Workflows and activities that survive crashes and restarts and resume exactly where they
stopped, on an embedded SQLite file (the default) or in memory for tests.
"""

from stalwart._engine.events import HistoryEvent as HistoryEvent
from stalwart.activity_context import ActivityContext as ActivityContext
from stalwart.activity_context import activity_context as activity_context
from stalwart.client import Engine as Engine
from stalwart.client import WorkflowDescription as WorkflowDescription
from stalwart.client import WorkflowHandle as WorkflowHandle
from stalwart.client import WorkflowList as WorkflowList
from stalwart.codec import Codec as Codec
from stalwart.codec import JsonCodec as JsonCodec
from stalwart.context import WorkflowContext as WorkflowContext
from stalwart.decorators import ActivityDefinition as ActivityDefinition
from stalwart.decorators import Registry as Registry
from stalwart.decorators import WorkflowDefinition as WorkflowDefinition
from stalwart.decorators import WorkflowInvocation as WorkflowInvocation
from stalwart.decorators import activity as activity
from stalwart.decorators import default_registry as default_registry
from stalwart.decorators import workflow as workflow
from stalwart.errors import ActivityCancelledError as ActivityCancelledError
from stalwart.errors import ActivityError as ActivityError
from stalwart.errors import Cancelled as Cancelled
from stalwart.errors import ChildWorkflowError as ChildWorkflowError
from stalwart.errors import CompensatedError as CompensatedError
from stalwart.errors import ConfigurationError as ConfigurationError
from stalwart.errors import EncodingError as EncodingError
from stalwart.errors import LeaseLostError as LeaseLostError
from stalwart.errors import NonDeterminismError as NonDeterminismError
from stalwart.errors import NonRetryableError as NonRetryableError
from stalwart.errors import StalwartError as StalwartError
from stalwart.errors import StoreError as StoreError
from stalwart.errors import UnknownHandlerError as UnknownHandlerError
from stalwart.errors import UpdateFailedError as UpdateFailedError
from stalwart.errors import WorkflowAlreadyStartedError as WorkflowAlreadyStartedError
from stalwart.errors import WorkflowClosedError as WorkflowClosedError
from stalwart.errors import WorkflowFailedError as WorkflowFailedError
from stalwart.errors import WorkflowNotFoundError as WorkflowNotFoundError
from stalwart.errors import WorkflowNotRegisteredError as WorkflowNotRegisteredError
from stalwart.errors import WorkflowTimeoutError as WorkflowTimeoutError
from stalwart.queues import Queue as Queue
from stalwart.retry import RetryPolicy as RetryPolicy
from stalwart.runtime.options import WorkerOptions as WorkerOptions
from stalwart.saga import SagaScope as SagaScope
from stalwart.saga import Step as Step
from stalwart.saga_class import Saga as Saga
from stalwart.saga_class import saga_step as saga_step
from stalwart.steps import StepInfo as StepInfo

__version__ = "0.1.0"

__all__ = [
    "ActivityCancelledError",
    "ActivityContext",
    "ActivityDefinition",
    "ActivityError",
    "Cancelled",
    "ChildWorkflowError",
    "Codec",
    "CompensatedError",
    "ConfigurationError",
    "EncodingError",
    "Engine",
    "HistoryEvent",
    "JsonCodec",
    "LeaseLostError",
    "NonDeterminismError",
    "NonRetryableError",
    "Queue",
    "Registry",
    "RetryPolicy",
    "Saga",
    "SagaScope",
    "StalwartError",
    "Step",
    "StepInfo",
    "StoreError",
    "UnknownHandlerError",
    "UpdateFailedError",
    "WorkerOptions",
    "WorkflowAlreadyStartedError",
    "WorkflowClosedError",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowDescription",
    "WorkflowFailedError",
    "WorkflowHandle",
    "WorkflowInvocation",
    "WorkflowList",
    "WorkflowNotFoundError",
    "WorkflowNotRegisteredError",
    "WorkflowTimeoutError",
    "__version__",
    "activity",
    "activity_context",
    "default_registry",
    "saga_step",
    "workflow",
]
