"""The ports the embedded servers are given come from outside the kernel's ephemeral range.

A port picked inside it (``bind(("127.0.0.1", 0))``) can be taken, between the pick and the
server's bind, by the local end of any outgoing connection of any process: the server then
exits with "address already in use" (a cluster's route port did, in CI, with three test
files running at once)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from natsagents.server.process import _free_ports

RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


@pytest.mark.skipif(not RANGE.exists(), reason="the ephemeral range is known on Linux only")
def test_picked_ports_are_distinct_free_and_below_the_ephemeral_range() -> None:
    low = int(RANGE.read_text().split()[0])
    if low < 11_000:
        pytest.skip(f"the ephemeral range starts at {low}: no room below it")
    ports = _free_ports(30)
    assert len(set(ports)) == 30
    assert all(1024 < port < low for port in ports), ports
    for port in ports:  # each is free: it binds
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_held_by_someone_else_is_never_picked() -> None:
    held = []
    try:
        for port in _free_ports(200):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", port))
            sock.listen()
            held.append(sock)
        taken = {int(s.getsockname()[1]) for s in held}
        assert not taken & set(_free_ports(200))
    finally:
        for sock in held:
            sock.close()
