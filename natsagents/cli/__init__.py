"""The ``natsagents`` command line (``python -m natsagents``).

Commands: ``server`` (a local nats-server or cluster), ``demo`` (a guided tour),
``call`` and ``send`` (talk to an agent by ``Kind/id``), and the cluster commands
``node`` (run a cluster node), ``ls``, ``nodes``, ``migrate`` and ``drain``, ``dlq`` (dead letters)
and ``auth`` (NATS users with least-privilege permissions). See :mod:`.main` for the
command registry and the exit codes.
"""

from .main import Exit, main

__all__ = ["Exit", "main"]
