"""Transport: the NATS connection. The only package that imports nats-py.

Layers, each importing only those before it (``tests/unit/test_public_api.py`` checks):
``settings.py`` (connect settings) → ``connection.py`` (:class:`Transport`, nats-py error
translation) → ``jetstream/`` (the JetStream API, streams, publishes, pull consumers) →
``kv/`` (key-value buckets and watches, built on ``jetstream/``).
"""

from .connection import Inbound, NoResponders, Subscription, Transport
from .settings import DEFAULT_URL, Auth, ConnectSettings, resolve_servers

__all__ = [
    "DEFAULT_URL",
    "Auth",
    "ConnectSettings",
    "Inbound",
    "NoResponders",
    "Subscription",
    "Transport",
    "resolve_servers",
]
