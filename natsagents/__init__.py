"""natsagents: a service mesh for distributed agents (actors) over NATS.

Write an agent class once, host it on any number of processes, and talk to it by
``kind/id`` from anywhere connected to the same NATS::

    class Counter(Agent):
        @action
        async def add(self, by: int = 1) -> int:
            self.state["n"] = self.state.get("n", 0) + by
            return self.state["n"]

    async with Mesh.embedded() as mesh:
        await mesh.host(Counter)
        print(await mesh.ref("Counter/c-1").call("add", by=2))
"""

from .agent import USE_DEFAULT, Agent, AgentFuture, AgentRef, Context, action, all_of, any_of, current_context
from .agent.policy import TrustedCaller
from .cluster import ClusterSettings, Hints, PartitionEvent, PartitionState, Resources
from .counters import CountersUnsupported, DistributedCounter
from .delivery import DeadLetter
from .delivery.settings import DeliverySettings
from .errors import (
    ActionDefinitionError,
    AgentError,
    AgentNotFound,
    AlreadyApplied,
    BadRequest,
    CallTimeout,
    CircuitOpen,
    ClusterAtCapacity,
    ConfigurationError,
    ConnectError,
    DegradedReply,
    HandlerError,
    InvalidAddress,
    InvalidAgentId,
    InvalidSessionToken,
    MeshClosed,
    NatsAgentsError,
    NotSupportedYet,
    Overloaded,
    PartitionError,
    PayloadTooLarge,
    ProtocolError,
    ServerBinaryNotFound,
    ServerError,
    TransportError,
    Unauthorized,
    Unavailable,
    UnknownAction,
    WriteQueued,
)
from .mesh import Mesh, MeshState
from .observability import CorrelationIdFilter, install_correlation_filter
from .resilience import BreakerSettings, CircuitState, RetryPolicy
from .runtime.session import Session
from .transport import Auth
from .wire.identity import Identity

__version__ = "0.1.0"

__all__ = [
    "USE_DEFAULT",
    "ActionDefinitionError",
    "Agent",
    "AgentError",
    "AgentFuture",
    "AgentNotFound",
    "AgentRef",
    "AlreadyApplied",
    "Auth",
    "BadRequest",
    "BreakerSettings",
    "CallTimeout",
    "CircuitOpen",
    "CircuitState",
    "ClusterAtCapacity",
    "ClusterSettings",
    "ConfigurationError",
    "ConnectError",
    "Context",
    "CorrelationIdFilter",
    "CountersUnsupported",
    "DeadLetter",
    "DegradedReply",
    "DeliverySettings",
    "DistributedCounter",
    "HandlerError",
    "Hints",
    "Identity",
    "InvalidAddress",
    "InvalidAgentId",
    "InvalidSessionToken",
    "Mesh",
    "MeshClosed",
    "MeshState",
    "NatsAgentsError",
    "NotSupportedYet",
    "Overloaded",
    "PartitionError",
    "PartitionEvent",
    "PartitionState",
    "PayloadTooLarge",
    "ProtocolError",
    "Resources",
    "RetryPolicy",
    "ServerBinaryNotFound",
    "ServerError",
    "Session",
    "TransportError",
    "TrustedCaller",
    "Unauthorized",
    "Unavailable",
    "UnknownAction",
    "WriteQueued",
    "__version__",
    "action",
    "all_of",
    "any_of",
    "current_context",
    "install_correlation_filter",
]
