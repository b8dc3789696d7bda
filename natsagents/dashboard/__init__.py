"""The web dashboard (``natsagents dashboard``): a live page of a cluster's nodes, agents,
request rates and latencies per kind, dead letters, and the operator's actions (migrate,
drain, replay). Assets ship in ``static/`` (plain JavaScript, no build step, no CDN).

Layers inside, each importing only those before it::

    preview → micro → catalog → series → api → server → app
"""

from .app import Dashboard

__all__ = ["Dashboard"]
