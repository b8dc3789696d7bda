"""The CLI on secured servers: the users ``natsagents auth`` generates (nkey seed and inbox
prefix, given as options or through a ``nats`` CLI context), ``.creds`` files in operator
(JWT) mode, and mutual TLS with certificates made for the test.

Every server is a real nats-server; every command runs as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nkeys
import pytest

from natsagents import Auth, ClusterSettings, Mesh
from natsagents.cli.auth import CONFIG_NAME, generate
from natsagents.server import NatsServer
from natsagents.server.permissions import Role
from tests.agents import Counter
from tests.cli.test_cli import free_port, run_cli
from tests.integration.test_auth_roles import _jwt, _key

ROLES = [Role.parse("node", "n1:Counter"), Role.parse("operator", "ops")]


@pytest.fixture(scope="module")
def auth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("auth")
    generate(out, ROLES)  # what 'natsagents auth --out DIR --node n1:Counter --operator ops' writes
    return out


@pytest.fixture(scope="module")
def secured(auth_dir: Path) -> Iterator[NatsServer]:
    with NatsServer(include=auth_dir / CONFIG_NAME) as server:
        yield server


@pytest.fixture
async def node(secured: NatsServer, auth_dir: Path) -> AsyncIterator[Mesh]:
    """Cluster node n1 with its generated credentials, hosting Counter/c1."""
    async with Mesh.connect(
        secured.url,
        name="n1",
        cluster=ClusterSettings(node_id="n1", lease=1.5, rebalance=False),
        auth=Auth(nkey_seed=str(auth_dir / "n1.nk")),
        inbox_prefix="_INBOX.n1",
    ) as mesh:
        await mesh.host(Counter)
        await mesh.ref("Counter/c1").call("add", by=2)  # activates it: a directory record
        yield mesh


def violations(server: NatsServer, seed_file: Path) -> list[str]:
    public = nkeys.from_seed(seed_file.read_bytes().strip()).public_key.decode()
    return [line for line in server.log_path.read_text().splitlines() if public in line and "Violation" in line]


async def operator_commands(*options: str, env: dict[str, str] | None = None) -> tuple[list[object], ...]:
    """``nodes``, ``ls`` and ``dlq ls`` (all ``--json``) with ``options``; their parsed output."""
    commands = (("nodes",), ("ls",), ("dlq", "ls"))
    done = await asyncio.gather(*(run_cli(*argv, "--json", *options, env=env) for argv in commands))
    results = []
    for argv, (rc, out, err) in zip(commands, done, strict=True):
        assert (rc, err) == (0, ""), f"{argv}: {err}"
        results.append(json.loads(out))
    return tuple(results)


def check_operator_view(nodes: list[object], agents: list[object], letters: list[object]) -> None:
    assert [(n["node"], n["live"]) for n in nodes] == [("n1", True)]  # type: ignore[index]
    assert [(a["agent"], a["node"]) for a in agents] == [("Counter/c1", "n1")]  # type: ignore[index]
    assert letters == []


# -- nkey users from natsagents auth ----------------------------------------------------------------


async def test_the_operator_runs_nodes_ls_and_dlq_with_its_nkey_and_inbox_prefix(
    node: Mesh, secured: NatsServer, auth_dir: Path
) -> None:
    seed = auth_dir / "ops.nk"
    options = ("--servers", secured.url, "--nkey", str(seed), "--inbox-prefix", "_INBOX.ops")
    check_operator_view(*await operator_commands(*options))
    assert violations(secured, seed) == []

    # Without its inbox prefix the server refuses the user's inbox: said at once, exit 1.
    rc, out, err = await run_cli("ls", "--servers", secured.url, "--nkey", str(seed))
    assert (rc, out) == (1, "")
    assert "error: unauthorized: the NATS server does not allow this connection to subscribe to its inbox" in err
    assert "hint: --inbox-prefix _INBOX.USER" in err

    # No credentials: refused at once, exit 3, with a hint.
    started = time.monotonic()
    rc, out, err = await run_cli("ls", "--servers", secured.url, "--connect-timeout", "20")
    assert (rc, out) == (3, "")
    assert f"error: NATS at {secured.url} refused the credentials" in err
    assert "hint: check --creds, --nkey" in err
    assert time.monotonic() - started < 10

    # Files are checked before connecting: exit 2 with the reason.
    not_a_seed = auth_dir / "nats-auth.conf"
    cases = (
        (("--nkey", str(not_a_seed)), f"{not_a_seed} does not hold an nkey user seed"),
        (("--nkey", str(auth_dir / "nope.nk")), f"nkey seed file {auth_dir / 'nope.nk'} does not exist"),
        (("--nkey", str(seed), "--token", "t"), "give one way to authenticate, not --nkey and --token"),
        (("--user", "ops"), "--user and --password go together"),
        (("--nkey", seed.read_text().strip()), "the nkey option takes the path of a seed file, not the seed itself"),
        (("--nkey", str(seed), "--inbox-prefix", "_INBOX.*"), "invalid inbox_prefix"),
    )
    done = await asyncio.gather(*(run_cli("nodes", "--servers", secured.url, *argv) for argv, _ in cases))
    for (_, message), (rc, out, err) in zip(cases, done, strict=True):
        assert (rc, out) == (2, ""), err
        assert message in err, err


async def test_the_operator_through_a_nats_context(
    node: Mesh, secured: NatsServer, auth_dir: Path, tmp_path: Path
) -> None:
    contexts = tmp_path / "config" / "nats" / "context"
    contexts.mkdir(parents=True)
    seed = auth_dir / "ops.nk"
    refused_before = violations(secured, seed)  # the module's server: earlier tests' refusals
    context = {  # as 'nats context save' writes it: every field, unused ones empty
        "description": "mesh operator",
        "url": secured.url,
        "token": "",
        "user": "",
        "password": "",
        "creds": "",
        "nkey": str(seed),
        "cert": "",
        "key": "",
        "ca": "",
        "nsc": "",
        "jetstream_domain": "",
        "jetstream_api_prefix": "",
        "jetstream_event_prefix": "",
        "inbox_prefix": "_INBOX.ops",
        "user_jwt": "",
    }
    (contexts / "ops.json").write_text(json.dumps(context))
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "NATS_CONTEXT": "ops"}
    check_operator_view(*await operator_commands(env=env))

    # Options win over the context: a stale context with a dead URL and a wrong inbox,
    # named by path with --context.
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({**context, "url": f"nats://127.0.0.1:{free_port()}", "inbox_prefix": "_INBOX.x"}))
    check_operator_view(
        *await operator_commands(
            "--context", str(stale), "--servers", secured.url, "--inbox-prefix", "_INBOX.ops", env=env
        )
    )
    assert violations(secured, seed) == refused_before

    # What a context cannot do: exit 2, saying why.
    (contexts / "nsc.json").write_text(json.dumps({**context, "nsc": "nsc://op/acc/ops"}))
    (contexts / "broken.json").write_text("{")
    cases = (
        ("nope", f"no nats context 'nope': {contexts / 'nope.json'} does not exist"),
        ("nsc", "sets nsc, which natsagents does not support (it honours url, user, password, token, creds"),
        ("broken", "is not valid JSON"),
    )
    done = await asyncio.gather(*(run_cli("ls", "--context", name, env=env) for name, _ in cases))
    for (_, message), (rc, out, err) in zip(cases, done, strict=True):
        assert (rc, out) == (2, ""), err
        assert message in err, err


# -- .creds files (operator / JWT mode) -------------------------------------------------------------


async def test_creds_files_in_operator_mode(auth_dir: Path, tmp_path: Path) -> None:
    """The operator's scoped signing key (jwt/operator.json) in an operator-mode server; the
    CLI connects with a user's .creds file."""
    operator, system, account = (
        _key(nkeys.PREFIX_BYTE_OPERATOR),
        _key(nkeys.PREFIX_BYTE_ACCOUNT),
        _key(nkeys.PREFIX_BYTE_ACCOUNT),
    )
    account_key, system_key = account.public_key.decode(), system.public_key.decode()
    scope = json.loads((auth_dir / "jwt" / "operator.json").read_text())
    unlimited = dict.fromkeys(
        ("subs", "data", "payload", "conn", "mem_storage", "disk_storage", "streams", "consumer"), -1
    )
    accounts = {
        system_key: _jwt(operator, system_key, "SYS", {"type": "account"}),
        account_key: _jwt(
            operator, account_key, "MESH", {"type": "account", "limits": unlimited, "signing_keys": [scope]}
        ),
    }
    op = _jwt(operator, operator.public_key.decode(), "OP", {"type": "operator", "system_account": system_key})
    preload = "\n".join(f'  {key}: "{token}"' for key, token in accounts.items())
    config = f'operator: "{op}"\nsystem_account: {system_key}\nresolver: MEMORY\nresolver_preload: {{\n{preload}\n}}\n'

    def user_creds(signer: nkeys.KeyPair, name: str) -> Path:
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        token = _jwt(
            signer, nkeys.from_seed(seed).public_key.decode(), name, {"type": "user", "issuer_account": account_key}
        )
        path = tmp_path / f"{name}.creds"
        path.write_text(
            f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n"
        )
        return path

    good = user_creds(nkeys.from_seed((auth_dir / "jwt" / "operator.nk").read_bytes().strip()), "carol")
    unknown_signer = user_creds(_key(nkeys.PREFIX_BYTE_ACCOUNT), "mallory")
    garbage = tmp_path / "garbage.creds"
    garbage.write_text("-----BEGIN NATS USER JWT-----\nnot-a-jwt\n------END NATS USER JWT------\n")

    async with NatsServer(config_extra=config) as server:
        conn = ("--servers", server.url)
        rc, out, err = await run_cli("nodes", "--json", *conn, "--creds", str(good), "--inbox-prefix", "_INBOX.carol")
        assert (rc, json.loads(out), err) == (0, [], "")
        rc, out, err = await run_cli("nodes", *conn, "--creds", str(unknown_signer), "--connect-timeout", "20")
        assert (rc, out) == (3, "") and f"NATS at {server.url} refused the credentials" in err, err
        rc, out, err = await run_cli("nodes", *conn, "--creds", str(garbage))
        assert (rc, out) == (2, "")
        assert f"error: {garbage} is not a NATS credentials file: it holds no user JWT and no user nkey seed" in err
        rc, out, err = await run_cli("nodes", *conn, "--creds", str(tmp_path / "missing.creds"))
        assert (rc, out) == (2, "") and f"credentials file {tmp_path / 'missing.creds'} does not exist" in err


# -- mutual TLS ----------------------------------------------------------------------------------


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem", "-days", "2", "-subj", "/CN=test CA")
    for name, ext in (
        ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        (d / f"{name}.ext").write_text(ext)
        _openssl("req", *ec, "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr", "-subj", f"/CN={name}")
        _openssl(
            "x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
            "-CAcreateserial", "-out", f"{d}/{name}.pem", "-days", "2", "-extfile", f"{d}/{name}.ext",
        )  # fmt: skip
    return d


async def test_mutual_tls(pki: Path, mesh_prefix: str, tmp_path: Path) -> None:
    tls_block = (
        f'tls {{\n  cert_file: "{pki}/server.pem"\n  key_file: "{pki}/server.key"\n'
        f'  ca_file: "{pki}/ca.pem"\n  verify: true\n  timeout: 2\n}}\n'
    )
    client = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    client.load_cert_chain(pki / "client.pem", pki / "client.key")
    cert = ("--tls-cert", str(pki / "client.pem"), "--tls-key", str(pki / "client.key"))
    ca = ("--tls-ca", str(pki / "ca.pem"))
    async with NatsServer(config_extra=tls_block) as server:
        async with Mesh.connect(server.url, prefix=mesh_prefix, tls=client) as host:
            await host.host(Counter)
            call = ("call", "Counter/t", "add", "--servers", server.url, "--prefix", mesh_prefix)
            rc, out, err = await run_cli(*call, *cert, *ca)
            assert (rc, out, err) == (0, "1\n", "")

            # The same from a context file: cert, key and ca.
            context = tmp_path / "tls.json"
            context.write_text(
                json.dumps(
                    {
                        "url": server.url,
                        "cert": str(pki / "client.pem"),
                        "key": str(pki / "client.key"),
                        "ca": str(pki / "ca.pem"),
                    }
                )
            )
            rc, out, err = await run_cli(
                "call", "Counter/t", "add", "--prefix", mesh_prefix, env={"NATS_CONTEXT": str(context)}
            )
            assert (rc, out, err) == (0, "2\n", "")

            # Without a client certificate, or without the CA: refused at once, saying what is missing.
            started = time.monotonic()
            no_cert, no_ca = (
                await run_cli(*call, *ca, "--connect-timeout", "20"),
                await run_cli(*call, *cert, "--connect-timeout", "20"),
            )
            assert time.monotonic() - started < 10
            rc, out, err = no_cert
            assert (rc, out) == (3, ""), err
            # The server's TLS alert usually arrives before it closes the socket; when the close
            # wins the race the client can only say the connection was closed (still at once).
            if "the server closed the connection" not in err:
                assert "TLS: the server requires a client certificate" in err
                assert "hint: --tls-cert FILE --tls-key FILE" in err
            rc, out, err = no_ca
            assert (rc, out) == (3, ""), err
            assert "TLS: the server's certificate is not trusted (unable to get local issuer certificate)" in err
            assert "hint: --tls-ca FILE" in err

            rc, out, err = await run_cli(*call, "--tls-cert", str(pki / "client.pem"))
            assert (rc, out) == (2, "") and "--tls-cert and --tls-key go together" in err
            assert await host.ref("Counter/t").call("get") == 2
