"""Transport: the NATS connection. The only package that imports nats-py."""

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
