"""The ``natsagents`` command line, run as a subprocess against real nats-servers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from natsagents import Agent, Mesh, __version__, action
from natsagents.cli import main
from natsagents.cli.main import parse_params, port_is_free, to_jsonable
from natsagents.errors import ConfigurationError
from natsagents.server import NatsServer
from natsagents.testing import wait_for

CLI = (sys.executable, "-m", "natsagents")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class CliCounter(Agent):
    @action
    async def add(self, by: int = 1) -> int:
        self.state["n"] = self.state.get("n", 0) + by
        return int(self.state["n"])

    @action
    async def echo(self, name: str, size: int = 0, tags: list[str] | None = None) -> dict[str, Any]:
        return {"name": name, "size": size, "tags": tags}

    @action
    async def blob(self) -> dict[str, Any]:
        return {
            "data": b"\x00\x01\xff",
            "at": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
            "pair": (1, 2),
        }

    @action
    async def fail(self) -> None:
        raise RuntimeError("kaput")


#: Where ``natsagents server`` run by the tests writes its state file (not the user's).
RUNTIME_DIR = tempfile.mkdtemp(prefix="natsagents-test-run-")


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NATS_URL", None)  # the tests always say which servers
    env.pop("NATS_CONTEXT", None)
    env["XDG_RUNTIME_DIR"] = RUNTIME_DIR
    env.update(extra or {})
    return env


async def run_cli(
    *args: str, within: float = 20.0, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """Run the CLI (or any ``python`` argv when ``args[0]`` ends in .py) and collect its output;
    ``env``: variables to set on top of the test environment."""
    argv = (sys.executable, *args) if args[0].endswith(".py") else (*CLI, *args)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(env), cwd=cwd
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@asynccontextmanager
async def background(*argv: str, env: Mapping[str, str] | None = None) -> AsyncIterator[asyncio.subprocess.Process]:
    """A long-running child (stdout piped, stderr inherited); killed if still running at the end."""
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, env=_env(env))
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def read_until(proc: asyncio.subprocess.Process, marker: str, within: float = 20.0) -> list[str]:
    """Lines of ``proc``'s stdout up to and including the first one starting with ``marker``."""
    assert proc.stdout is not None
    lines: list[str] = []
    end = time.monotonic() + within
    while not (lines and lines[-1].startswith(marker)):
        raw = await asyncio.wait_for(proc.stdout.readline(), max(0.1, end - time.monotonic()))
        if not raw:
            raise AssertionError(f"stdout ended before {marker!r}: {lines}")
        lines.append(raw.decode().rstrip("\n"))
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts_connections(url: str) -> bool:
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
    except OSError:
        return False
    return True


@pytest.fixture
async def hosted(mesh: Mesh, nats_url: str, mesh_prefix: str) -> tuple[str, ...]:
    """The connection options that reach ``CliCounter`` hosted by the test's mesh."""
    await mesh.host(CliCounter)
    return ("--servers", nats_url, "--prefix", mesh_prefix)


# -- call / send ----------------------------------------------------------------------


async def test_call_prints_the_result_as_json(hosted: tuple[str, ...]) -> None:
    rc, out, err = await run_cli("call", "CliCounter/c-1", "add", "--param", "by=3", *hosted)
    assert (rc, json.loads(out), err) == (0, 3, "")
    rc, out, _ = await run_cli("call", "CliCounter/c-1", "add", "--json", '{"by": 4}', *hosted)
    assert (rc, json.loads(out)) == (0, 7)

    # --json and --param combine; a value that is not JSON is taken as a string.
    params = ("--json", '{"size": 2}', "-p", "name=plain text", "-p", 'tags=["a", "b"]')
    rc, out, _ = await run_cli("call", "CliCounter/c-1", "echo", *params, *hosted)
    assert (rc, json.loads(out)) == (0, {"name": "plain text", "size": 2, "tags": ["a", "b"]})


async def test_call_converts_bytes_and_datetimes(hosted: tuple[str, ...]) -> None:
    rc, out, err = await run_cli("call", "CliCounter/c-1", "blob", *hosted)
    assert rc == 0
    assert json.loads(out) == {
        "data": base64.b64encode(b"\x00\x01\xff").decode(),
        "at": "2024-01-02T03:04:05+00:00",
        "pair": [1, 2],
    }
    assert "note: bytes are shown as base64" in err


async def test_error_replies_exit_1(hosted: tuple[str, ...]) -> None:
    unknown, bad, failed, raised = await asyncio.gather(
        run_cli("call", "CliCounter/c-1", "nope", *hosted),
        run_cli("call", "CliCounter/c-1", "add", "-p", "by=three", *hosted),
        run_cli("send", "CliCounter/c-1", "nope", *hosted),
        run_cli("call", "CliCounter/c-1", "fail", *hosted),
    )
    rc, out, err = unknown
    assert (rc, out) == (1, "")
    assert "error: unknown_action: CliCounter has no action 'nope'" in err
    assert "add, blob, echo, fail" in err  # the hint lists the actions
    rc, _, err = bad
    assert rc == 1 and "error: bad_request: invalid parameters: by: expected int, got str" in err
    rc, out, _ = failed  # accepted into the mailbox: the unknown action is only noticed later
    assert (rc, out.strip()) == (0, "accepted")

    rc, _, err = raised
    assert rc == 1 and "error: handler_error: RuntimeError: kaput" in err
    assert "hint: --traceback prints the remote traceback" in err and 'kaput")' not in err

    rc, _, err = await run_cli("call", "CliCounter/c-1", "fail", "--traceback", *hosted)
    assert rc == 1
    assert "error: handler_error: RuntimeError: kaput" in err
    assert "remote traceback:" in err and 'raise RuntimeError("kaput")' in err


async def test_send_is_accepted_and_handled(mesh: Mesh, hosted: tuple[str, ...]) -> None:
    rc, out, err = await run_cli("send", "CliCounter/s-1", "add", "-p", "by=5", *hosted)
    assert (rc, out.strip(), err) == (0, "accepted", "")

    def handled() -> bool:
        agent = mesh.local_agent("CliCounter/s-1")
        return agent is not None and agent.state.get("n") == 5

    await wait_for(handled, what="the sent message was handled")


async def test_invalid_address_exits_2(hosted: tuple[str, ...]) -> None:
    rc, out, err = await run_cli("call", "no-slash", "add", *hosted)
    assert (rc, out) == (2, "")
    assert "error: agent address must look like 'Kind/id'" in err


async def test_unreachable_server_exits_3_quickly() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    rc, out, err = await run_cli("call", "CliCounter/c-1", "add", "--servers", url, "--connect-timeout", "1")
    assert (rc, out) == (3, "")
    assert f"could not connect to NATS at {url}" in err
    assert time.monotonic() - started < 8


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["call", "Counter", "add"], "agent address must look like 'Kind/id'"),
        (["call", "9Counter/x", "add"], "invalid agent kind"),
        (["call", "Counter/x", "add", "-p", "by"], "--param must look like KEY=VALUE"),
        (["call", "Counter/x", "add", "--json", "{by: 1}"], "--json is not valid JSON"),
        (["send", "Counter/x", "add", "--json", "[1]"], "--json must be a JSON object"),
        (["call", "Counter/x", "add", "--json", '{"by": 1}', "-p", "by=2"], "parameter 'by' is given twice"),
        (["call", "Counter/x", "add", "--prefix", "a b"], "invalid subject prefix"),
        (["server", "--cluster", "3", "--port", "4222"], "--port and --monitor-port cannot be used with --cluster"),
    ],
)
def test_usage_errors_exit_2_before_connecting(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--servers", "nats://127.0.0.1:1"] if argv[0] != "server" else argv) == 2
    assert message in capsys.readouterr().err


def test_argparse_errors_version_and_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["call", "Counter/x"]) == 2  # ACTION missing
    assert "required: ACTION" in capsys.readouterr().err
    assert main(["call", "Counter/x", "add", "--timeout", "0"]) == 2
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"natsagents {__version__}"
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_parse_params_and_json_conversion() -> None:
    pairs = ["n=1", "f=1.5", "s=hello", "b=true", "z=null", "l=[1]", "e=", "eq=a=b"]
    expected = {"n": 1, "f": 1.5, "s": "hello", "b": True, "z": None, "l": [1], "e": "", "eq": "a=b"}
    assert parse_params(None, pairs) == expected
    with pytest.raises(ConfigurationError, match="given twice"):
        parse_params(None, ["a=1", "a=2"])
    notes: set[str] = set()
    assert to_jsonable({b"k": {1, 2}, 3: None}, notes) == {"aw==": [1, 2], "3": None}  # "aw==": base64 of b"k"
    assert notes == {"bytes are shown as base64 strings", "non-string map keys are shown as JSON text"}


# -- demo -----------------------------------------------------------------------------

DEMO_SECTIONS = (
    "send ",
    "all_of",
    ".then",
    "timeout=2.0",
    "Summer/s-1",
    "BadRequest",
    "HandlerError",
    "remote traceback ends in divide()",
    "UnknownAction",
    "CallTimeout",
    "done in",
)


async def test_demo_embedded_and_on_given_servers(nats_url: str) -> None:
    started = time.monotonic()
    (rc1, out1, err1), (rc2, out2, err2) = await asyncio.gather(run_cli("demo"), run_cli("demo", "--servers", nats_url))
    assert time.monotonic() - started < 20
    assert (rc1, err1) == (0, ""), out1
    assert (rc2, err2) == (0, ""), out2
    assert "embedded nats-server" in out1
    assert f"nats-server at {nats_url}" in out2 and "prefix 'demo-" in out2
    for out in (out1, out2):
        for section in DEMO_SECTIONS:
            assert section in out, f"{section!r} missing from:\n{out}"
        assert "unexpectedly" not in out
        assert 12 <= len(out.splitlines()) <= 25


# -- server ---------------------------------------------------------------------------


async def _check_reachable(url: str, prefix: str) -> None:
    async with Mesh.connect(url, prefix=prefix) as mesh:
        await mesh.host(CliCounter)
        assert await mesh.ref("CliCounter/x").call("add", by=2) == 2


async def test_server_runs_until_sigint(mesh_prefix: str) -> None:
    async with background(*CLI, "server") as proc:
        lines = await read_until(proc, "NATS_URL=")
        url = lines[-1].removeprefix("NATS_URL=")
        assert len(lines) == 2 and url in lines[0] and "monitor http://127.0.0.1:" in lines[0]
        await _check_reachable(url, mesh_prefix)
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    assert not accepts_connections(url)


def _read_url(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bytes(response.read())


async def test_server_cluster_stops_on_sigterm(mesh_prefix: str) -> None:
    async with background(*CLI, "server", "--cluster", "3", "--name", mesh_prefix) as proc:
        lines = await read_until(proc, "NATS_URL=", within=40)
        urls = lines[-1].removeprefix("NATS_URL=").split(",")
        assert len(urls) == 3 and len(lines) == 4
        assert [line.split()[0] for line in lines[:3]] == [f"{mesh_prefix}-{i}" for i in range(3)]
        await _check_reachable(",".join(urls), mesh_prefix)
        for line in lines[:3]:  # each server's pid (to pause one: kill -STOP), and its pings
            fields = line.split()
            pid = int(fields[fields.index("pid") + 1])
            assert os.readlink(f"/proc/{pid}/exe").endswith("nats-server")
            monitor = fields[fields.index("monitor") + 1]
            raw = await asyncio.to_thread(_read_url, f"{monitor}/varz")
            varz = json.loads(raw)
            assert (varz["ping_interval"], varz["ping_max"]) == (2_000_000_000, 3), varz["ping_interval"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert not any(accepts_connections(url) for url in urls)


# -- examples -------------------------------------------------------------------------


async def test_examples_run(nats_url: str, mesh_prefix: str) -> None:
    async with background(
        sys.executable, str(EXAMPLES / "host.py"), "--servers", nats_url, "--prefix", mesh_prefix
    ) as host:
        counter, _ = await asyncio.gather(run_cli(str(EXAMPLES / "counter.py")), read_until(host, "hosting"))
        assert counter == (0, "1\n42\n", "")
        rc, out, err = await run_cli(str(EXAMPLES / "caller.py"), "--servers", nats_url, "--prefix", mesh_prefix)
        assert (rc, err) == (0, "")
        assert "get()     -> 12" in out and "all_of    -> [1, 2, 3]" in out and "BadRequest" in out
        host.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(host.wait(), 15) == 0


async def test_the_ledger_example_applies_each_payment_once_and_replays_its_dead_letter() -> None:
    rc, out, err = await run_cli(str(EXAMPLES / "ledger.py"), within=60.0)
    assert rc == 0, err
    assert out.splitlines() == [
        "balance after 100 deposits: 100",
        "payment-42: 70",
        "payment-42 again: 70",  # the same payment: not withdrawn twice
        "balance: 70",
        "withdraw 1000: handler_error",
        "dead letter 1: Account/alice withdraw after 3 attempts",
        "dead letters left: 0",
        "balance: 70",  # the replayed withdrawal ran after the deposit of 1000
    ]
    assert "dead-lettered after 3 attempt(s)" in err  # the owner logs it


# -- failing fast and cleanly ---------------------------------------------------------


class Napper(Agent):
    """Sleeps in ``nap``; ``napping`` counts the naps under way (tests wait on it)."""

    napping = 0

    @action
    async def nap(self, seconds: float) -> float:
        Napper.napping += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            Napper.napping -= 1
        return seconds


async def test_a_refused_connection_fails_at_once(tmp_path: Path) -> None:
    """Every server refuses: no waiting for --connect-timeout (30 s here), exit 3, and a hint
    when the URL was not given (the state file of a 'natsagents server' that is gone)."""
    first, second = (f"nats://127.0.0.1:{free_port()}" for _ in range(2))
    state = tmp_path / "natsagents" / "server.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"pid": os.getpid(), "urls": [first]}))  # a live pid: this test
    started = time.monotonic()
    given, from_env, from_state = await asyncio.gather(
        run_cli("call", "CliCounter/c-1", "add", "--servers", f"{first},{second}", "--connect-timeout", "30"),
        run_cli("dlq", "ls", "--connect-timeout", "30", env={"NATS_URL": second}),
        run_cli("ls", "--connect-timeout", "30", env={"XDG_RUNTIME_DIR": str(tmp_path)}),
    )
    assert time.monotonic() - started < 10
    for rc, out, err in (given, from_env, from_state):
        assert (rc, out) == (3, ""), err
        assert "the connection was refused: no server listens there" in err
    assert f"could not connect to NATS at {first}, {second}: the connection was refused" in given[2]
    assert "hint:" not in given[2] and "hint:" not in from_env[2]
    assert f"error: could not connect to NATS at {first}" in from_state[2]
    assert "hint: start a server with 'natsagents server'" in from_state[2]


async def test_a_call_that_times_out_exits_4(mesh: Mesh, nats_url: str, mesh_prefix: str) -> None:
    await mesh.host(Napper)
    conn = ("--servers", nats_url, "--prefix", mesh_prefix)
    rc, out, err = await run_cli("call", "Napper/t", "nap", "-p", "seconds=1", "--timeout", "0.3", *conn)
    assert (rc, out) == (4, "")
    assert err.startswith(f"error: timeout: no reply from {mesh_prefix}.agent.Napper.t within")
    assert "hint: --timeout (here 0.3 s) sets how long to wait" in err
    rc, out, _ = await run_cli("call", "Napper/t", "nap", "-p", "seconds=0", *conn)
    assert (rc, out) == (0, "0.0\n")


async def test_a_dead_server_ends_the_command_with_a_sentence(mesh_prefix: str) -> None:
    """The server dies while a call waits: exit 3 at once, saying so (before: the call waited
    for its timeout under 'NATS error: nats: unexpected EOF' lines, then a traceback)."""
    server = NatsServer().start()
    try:
        async with Mesh.connect(server.url, prefix=mesh_prefix, stop_timeout=0.5, drain_timeout=1.0) as host:
            await host.host(Napper)
            argv = ("call", "Napper/d", "nap", "-p", "seconds=60", "--timeout", "60")
            call = asyncio.ensure_future(run_cli(*argv, "--servers", server.url, "--prefix", mesh_prefix, within=30))
            await wait_for(lambda: Napper.napping == 1, what="the call is running")
            server.kill()
            started = time.monotonic()
            rc, out, err = await call
            assert time.monotonic() - started < 10
    finally:
        server.stop()
    assert (rc, out) == (3, ""), err
    assert f"error: lost the connection to NATS at {server.url} (the server closed the connection)" in err
    assert "unexpected EOF" not in err and "Traceback" not in err


async def test_a_closed_stdout_ends_quietly(hosted: tuple[str, ...]) -> None:
    """``natsagents ... | head -1``: the reader is gone before the output; exit 141, no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = await asyncio.create_subprocess_exec(
            *CLI, "call", "CliCounter/p", "echo", "-p", "name=x", *hosted,
            stdout=write_end, stderr=asyncio.subprocess.PIPE, env=_env(),
        )  # fmt: skip
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert (proc.returncode, err.decode()) == (141, "")


def test_an_unknown_option_prints_the_subcommands_usage(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, usage in (
        (["ls", "--bogus"], "usage: natsagents ls "),
        (["call", "Counter/x", "add", "--bogus", "1"], "usage: natsagents call "),
        (["dlq", "ls", "--limit", "3", "--bogus"], "usage: natsagents dlq ls "),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(usage) and "error: unrecognized arguments: --bogus" in err, err


async def test_server_then_ls_finds_the_server(tmp_path: Path) -> None:
    """'natsagents server' takes 4222 when it is free, else another port; either way it
    writes its URL where 'ls' without --servers finds it."""
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    state = tmp_path / "natsagents" / "server.json"
    with socket.socket() as blocker:
        with contextlib.suppress(OSError):  # 4222 is taken: by this test if nobody else has it
            blocker.bind(("127.0.0.1", 4222))
            blocker.listen()
        assert not port_is_free(4222)
        async with background(*CLI, "server", env=env) as proc:
            url = (await read_until(proc, "NATS_URL="))[-1].removeprefix("NATS_URL=")
            assert not url.endswith(":4222")
            assert json.loads(state.read_text())["urls"] == [url]
            rc, out, err = await run_cli("ls", env=env)
            assert (rc, out, err) == (0, "no active agents\n", "")
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
    assert not state.exists()
    assert port_is_free(free_port())
