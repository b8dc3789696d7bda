"""The dashboard's JSON API: routes under ``/api/``, parameters validated, errors typed.

Every request is treated as hostile: unknown parameters are refused, numbers are bounded
(a page holds at most :data:`MAX_PAGE` items, an offset at most :data:`MAX_OFFSET`),
texts are short, and a POST body must be a small JSON object with known fields. Reads are
served from memory (the catalog, the sampler); the routes that reach NATS (one agent's
state, dead letters, actions) run at most :data:`MAX_CONCURRENT` at a time.

Routes (``GET`` unless marked)::

    /api/overview                     counts, members, sampler status, recent actions
    /api/nodes                        the members (heartbeat records)
    /api/series                       points of the plots (per kind and per node)
    /api/agents?q&kind&node&status&offset&limit   one page of the directory
    /api/agent?agent=Kind/id          one agent: directory record and stored state
    /api/dead-letters?limit           the oldest dead letters, bodies decoded
    POST /api/migrate                 {"agent", "to", "strategy"?}
    POST /api/drain                   {"node"}            (runs in the background)
    POST /api/undrain                 {"node"}            (when the SDK can undrain)
    POST /api/dead-letters/replay     {"seq"}
    POST /api/dead-letters/delete     {"seq"}
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ..cluster.directory import DirectoryRecord, Status
from ..cluster.settings import STRATEGIES, validate_node_id
from ..delivery import DeadLetter
from ..errors import (
    AgentError,
    AgentNotFound,
    CallTimeout,
    ConfigurationError,
    JetStreamError,
    NatsAgentsError,
    ProtocolError,
    StreamNotFound,
    TransportError,
    Unauthorized,
    Unavailable,
)
from ..state.store import StateStore
from ..tasks import TaskGroup
from ..wire import codec, envelope
from ..wire import headers as h
from ..wire.ids import agent_key, parse_address, validate_kind
from .catalog import AgentCatalog
from .preview import preview
from .series import Sampler

if TYPE_CHECKING:
    from ..mesh import Mesh

__all__ = ["MAX_OFFSET", "MAX_PAGE", "Api", "ApiError", "Reply"]

log = logging.getLogger("natsagents.dashboard")

MAX_PAGE = 200
MAX_OFFSET = 10_000_000
MAX_TEXT = 200
MAX_DEAD_LETTERS = 200
MAX_BODY = 16 * 1024
MAX_CONCURRENT = 8
MAX_ACTIONS_RUNNING = 16
ACTIONS_KEPT = 50
_STATE_BUDGET = 256 * 1024
_BODY_BUDGET = 32 * 1024
_STATUSES = tuple(s.value for s in Status)
_STREAM_NOT_FOUND = 10059
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false"}


class ApiError(Exception):
    """A request the API refuses: its HTTP status, a code and a message for the page."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any


def agent_json(rec: DirectoryRecord) -> dict[str, Any]:
    return {
        "agent": rec.address,
        "kind": rec.kind,
        "id": rec.agent_id,
        "node": rec.node,
        "epoch": rec.epoch,
        "status": rec.status.value,
        "since": rec.since,
        "restart": rec.restart,
        "needs": dict(rec.needs),
        "hints": dict(rec.hints),
    }


# -- parameters -----------------------------------------------------------------------


class _Params:
    """The query parameters of one request; each may be read once, and unread ones
    are refused at the end (:meth:`done`)."""

    def __init__(self, query: Mapping[str, str]) -> None:
        self._query = dict(query)

    def text(self, name: str, *, max_len: int = MAX_TEXT) -> str | None:
        value = self._query.pop(name, None)
        if value is None or value == "":
            return None
        if len(value) > max_len:
            raise ApiError(400, "bad_request", f"{name} is longer than {max_len} characters")
        return value

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        value = self._query.pop(name, None)
        if value is None or value == "":
            return default
        if not value.isdigit() or len(value) > 12:
            raise ApiError(400, "bad_request", f"{name} must be a whole number in [{lo}, {hi}]")
        number = int(value)
        if not lo <= number <= hi:
            raise ApiError(400, "bad_request", f"{name} must be a whole number in [{lo}, {hi}]")
        return number

    def done(self) -> None:
        if self._query:
            raise ApiError(400, "bad_request", f"unknown parameter {sorted(self._query)[0]!r}")


def _checked(what: str, check: Callable[[str], Any], value: str) -> Any:
    try:
        return check(value)
    except ConfigurationError as exc:
        raise ApiError(400, "bad_request", f"{what}: {exc}") from None


def _body(raw: bytes, fields: Mapping[str, type]) -> dict[str, Any]:
    """A JSON object whose fields are among ``fields``, each of its type."""
    if len(raw) > MAX_BODY:
        raise ApiError(413, "payload_too_large", f"request body over {MAX_BODY} bytes")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise ApiError(400, "bad_request", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the request body must be a JSON object")
    for key, value in body.items():
        wanted = fields.get(key)
        if wanted is None:
            raise ApiError(400, "bad_request", f"unknown field {key!r}")
        if not isinstance(value, wanted) or isinstance(value, bool) is not (wanted is bool):
            raise ApiError(400, "bad_request", f"{key} must be {_TYPE_NAMES.get(wanted, wanted.__name__)}")
    return body


def _required(body: Mapping[str, Any], name: str) -> Any:
    if name not in body:
        raise ApiError(400, "bad_request", f"missing field {name!r}")
    return body[name]


def _seq(body: Mapping[str, Any]) -> int:
    seq = int(_required(body, "seq"))
    if not 1 <= seq <= 2**53:
        raise ApiError(400, "bad_request", "seq must be a dead letter sequence (>= 1)")
    return seq


def _error_reply(exc: NatsAgentsError) -> ApiError:
    """The HTTP face of a library error."""
    if isinstance(exc, CallTimeout):
        return ApiError(504, exc.code, exc.message)
    if isinstance(exc, AgentNotFound):
        return ApiError(404, exc.code, exc.message)
    if isinstance(exc, ConfigurationError):
        return ApiError(400, "bad_request", str(exc))
    if isinstance(exc, Unavailable):
        return ApiError(409, exc.code, exc.message)
    if isinstance(exc, Unauthorized):
        return ApiError(403, exc.code, exc.message)
    if isinstance(exc, AgentError):
        return ApiError(400 if exc.code == "bad_request" else 502, exc.code, exc.message)
    if isinstance(exc, JetStreamError):
        return ApiError(502, "jetstream", str(exc))
    if isinstance(exc, TransportError):
        return ApiError(503, "nats_unavailable", str(exc))
    return ApiError(502, "error", str(exc))


# -- actions --------------------------------------------------------------------------


class _Actions:
    """Recent operator actions, for the page's activity list."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.items: deque[dict[str, Any]] = deque(maxlen=ACTIONS_KEPT)

    def running(self) -> int:
        return sum(1 for a in self.items if a["status"] == "running")

    def begin(self, action: str, target: str) -> dict[str, Any]:
        if self.running() >= MAX_ACTIONS_RUNNING:
            raise ApiError(429, "busy", f"{MAX_ACTIONS_RUNNING} actions are running; wait for one to end")
        entry = {"id": next(self._ids), "action": action, "target": target, "status": "running", "started": time.time()}
        self.items.append(entry)
        return entry

    @staticmethod
    def end(entry: dict[str, Any], *, result: Any = None, error: ApiError | None = None) -> None:
        entry["ended"] = time.time()
        if error is None:
            entry["status"] = "ok"
            entry["result"] = result
        else:
            entry["status"] = "failed"
            entry["error"] = {"code": error.code, "message": error.message}


# -- the API --------------------------------------------------------------------------


Route = Callable[[_Params, bytes], Awaitable[Any]]


class Api:
    """The routes of the dashboard.

    Args:
        mesh: an open mesh.
        catalog: the directory in memory.
        sampler: members, plots, dead-letter count.
        action_timeout: seconds a migration or a dead-letter operation may take.
        drain_timeout: seconds a drain may take.
    """

    def __init__(
        self,
        mesh: Mesh,
        catalog: AgentCatalog,
        sampler: Sampler,
        *,
        action_timeout: float = 30.0,
        drain_timeout: float = 300.0,
    ) -> None:
        self._mesh = mesh
        self._catalog = catalog
        self._sampler = sampler
        self._action_timeout = action_timeout
        self._drain_timeout = drain_timeout
        self._actions = _Actions()
        self._limit = asyncio.Semaphore(MAX_CONCURRENT)
        self._tasks = TaskGroup("dashboard actions", log)
        self._store: StateStore | None = None
        self._store_lock = asyncio.Lock()
        self._get: dict[str, Route] = {
            "/api/overview": self._overview,
            "/api/nodes": self._nodes,
            "/api/series": self._series,
            "/api/agents": self._agents,
            "/api/agent": self._agent,
            "/api/dead-letters": self._dead_letters,
        }
        self._post: dict[str, Route] = {
            "/api/migrate": self._migrate,
            "/api/drain": self._drain,
            "/api/dead-letters/replay": self._replay,
            "/api/dead-letters/delete": self._delete,
        }
        if self.can_undrain:
            self._post["/api/undrain"] = self._undrain

    @property
    def can_undrain(self) -> bool:
        """Whether this SDK can take a node out of draining (``Mesh.undrain``)."""
        return callable(getattr(self._mesh, "undrain", None))

    async def aclose(self) -> None:
        await self._tasks.aclose()

    def knows(self, path: str) -> bool:
        return path in self._get or path in self._post

    async def handle(self, method: str, path: str, query: Mapping[str, str], body: bytes) -> Reply:
        """Answer one request. Never raises for anything a client sent."""
        routes = self._get if method in ("GET", "HEAD") else self._post if method == "POST" else {}
        route = routes.get(path)
        try:
            if route is None:
                if self.knows(path):
                    allowed = "POST" if path in self._post else "GET"
                    raise ApiError(405, "method_not_allowed", f"{path} takes {allowed}")
                raise ApiError(404, "not_found", f"no API route {path}")
            params = _Params(query)
            result = await route(params, body)
            return Reply(200, result)
        except ApiError as exc:
            return Reply(exc.status, {"error": exc.code, "message": exc.message})
        except NatsAgentsError as exc:
            err = _error_reply(exc)
            return Reply(err.status, {"error": err.code, "message": err.message})

    # -- reads -----------------------------------------------------------------------

    async def _overview(self, params: _Params, raw: bytes) -> Any:
        params.done()
        s = self._sampler
        counts = self._catalog.counts()
        last = s.points[-1] if s.points else None
        return {
            "prefix": self._mesh.prefix,
            "time": time.time(),
            "interval": s.interval,
            "sampled_at": s.sampled_at,
            "errors": dict(s.errors) | ({"directory": self._catalog.error} if self._catalog.error else {}),
            "catalog": {"ready": self._catalog.ready, "agents": len(self._catalog), "rejected": self._catalog.rejected},
            "counts": counts,
            "nodes": s.nodes,
            "kinds": last["kinds"] if last else {},
            "kind_details": s.kinds,
            "dead_letters": s.dead_letters,
            "actions": list(reversed(self._actions.items)),
            "features": {"undrain": self.can_undrain, "strategies": list(STRATEGIES)},
        }

    async def _nodes(self, params: _Params, raw: bytes) -> Any:
        params.done()
        return {"nodes": self._sampler.nodes, "sampled_at": self._sampler.sampled_at}

    async def _series(self, params: _Params, raw: bytes) -> Any:
        params.done()
        return {"interval": self._sampler.interval, "points": list(self._sampler.points)}

    async def _agents(self, params: _Params, raw: bytes) -> Any:
        text = params.text("q") or ""
        kind = params.text("kind")
        node = params.text("node")
        status = params.text("status")
        offset = params.integer("offset", 0, 0, MAX_OFFSET)
        limit = params.integer("limit", 50, 1, MAX_PAGE)
        params.done()
        if kind is not None:
            _checked("kind", validate_kind, kind)
        if node is not None:
            _checked("node", validate_node_id, node)
        if status is not None and status not in _STATUSES:
            raise ApiError(400, "bad_request", f"status must be one of {', '.join(_STATUSES)}")
        page = self._catalog.query(text=text, kind=kind, node=node, status=status, offset=offset, limit=limit)
        return {
            "total": page.total,
            "offset": page.offset,
            "limit": limit,
            "ready": self._catalog.ready,
            "items": [agent_json(r) for r in page.items],
        }

    async def _state_store(self) -> StateStore:
        async with self._store_lock:
            if self._store is None:
                store = StateStore(self._mesh.transport, self._mesh.prefix)
                await store.start()
                self._store = store
            return self._store

    async def _agent(self, params: _Params, raw: bytes) -> Any:
        address = params.text("agent", max_len=400)
        params.done()
        if address is None:
            raise ApiError(400, "bad_request", "give the agent as agent=Kind/id")
        kind, agent_id = _checked("agent", parse_address, address)
        record = self._catalog.get(agent_key(kind, agent_id))
        out: dict[str, Any] = {"agent": f"{kind}/{agent_id}", "record": agent_json(record) if record else None}
        async with self._limit:
            store = await self._state_store()
            try:
                stored = await store.load(kind, agent_id)
            except (TransportError, AgentError):
                raise
            except NatsAgentsError as exc:  # a corrupt record: show why, not fail the page
                out["state"] = None
                out["state_error"] = str(exc)
                return out
        if stored.revision == 0:
            out["state"] = None
        else:
            try:
                size = len(codec.encode(stored.data))
            except (TypeError, ValueError):
                size = None
            out["state"] = {
                "epoch": stored.epoch,
                "revision": stored.revision,
                "seq": stored.seq,
                "applied": len(stored.applied),
                "empty": stored.empty,
                "bytes": size,
                "data": preview(stored.data, _STATE_BUDGET),
            }
        return out

    async def _dead_letters(self, params: _Params, raw: bytes) -> Any:
        limit = params.integer("limit", 50, 1, MAX_DEAD_LETTERS)
        params.done()
        async with self._limit:
            try:
                letters = await self._mesh.dead_letters(limit=limit)
            except JetStreamError as exc:
                if not (isinstance(exc, StreamNotFound) or exc.err_code == _STREAM_NOT_FOUND):
                    raise
                letters = []
        return {"total": self._sampler.dead_letters, "limit": limit, "items": [_letter_json(d) for d in letters]}

    # -- actions ---------------------------------------------------------------------

    async def _act(self, action: str, target: str, run: Callable[[], Awaitable[Any]]) -> Any:
        entry = self._actions.begin(action, target)
        try:
            async with self._limit:
                result = await run()
        except NatsAgentsError as exc:
            err = _error_reply(exc)
            self._actions.end(entry, error=err)
            raise err from None
        self._actions.end(entry, result=result)
        self._sampler.wake()
        return {"action": entry}

    async def _migrate(self, params: _Params, raw: bytes) -> Any:
        params.done()
        body = _body(raw, {"agent": str, "to": str, "strategy": str})
        kind, agent_id = _checked("agent", parse_address, _required(body, "agent"))
        to = _checked("to", validate_node_id, _required(body, "to"))
        strategy = body.get("strategy", "checkpoint_restore")
        if strategy not in STRATEGIES:
            raise ApiError(400, "bad_request", f"strategy must be one of {', '.join(STRATEGIES)}")

        async def run() -> Any:
            return await self._mesh.migrate(kind, agent_id, to=to, strategy=strategy, timeout=self._action_timeout)

        return await self._act("migrate", f"{kind}/{agent_id} → {to}", run)

    def _node_param(self, raw: bytes) -> str:
        body = _body(raw, {"node": str})
        node: str = _checked("node", validate_node_id, _required(body, "node"))
        if not any(n["node"] == node for n in self._sampler.nodes):
            raise ApiError(404, "not_found", f"no member {node}")
        return node

    async def _drain(self, params: _Params, raw: bytes) -> Any:
        """Start draining a node; it runs in the background (a drain may take minutes)
        and its end shows in the actions list."""
        params.done()
        node = self._node_param(raw)
        entry = self._actions.begin("drain", node)

        async def run() -> None:
            try:
                result = await self._mesh.drain(node, timeout=self._drain_timeout)
            except NatsAgentsError as exc:
                self._actions.end(entry, error=_error_reply(exc))
            except Exception as exc:  # the entry must not stay "running"
                log.exception("dashboard: draining %s failed", node)
                self._actions.end(entry, error=ApiError(500, "internal", f"{type(exc).__name__}: {exc}"))
            else:
                self._actions.end(entry, result=result)
            finally:
                self._sampler.wake()

        self._tasks.spawn(run(), name=f"dashboard drain {node}")
        self._sampler.wake()
        return {"action": entry}

    async def _undrain(self, params: _Params, raw: bytes) -> Any:
        params.done()
        node = self._node_param(raw)
        # Present from the SDK version that can undrain (the route exists only then).
        undrain: Callable[..., Awaitable[Any]] = cast(Any, self._mesh).undrain

        async def run() -> Any:
            return await undrain(node, timeout=self._action_timeout)

        return await self._act("undrain", node, run)

    async def _replay(self, params: _Params, raw: bytes) -> Any:
        params.done()
        seq = _seq(_body(raw, {"seq": int}))

        async def run() -> Any:
            return {"seq": seq, "inbox_seq": await self._mesh.replay_dead_letter(seq)}

        return await self._act("replay", f"dead letter {seq}", run)

    async def _delete(self, params: _Params, raw: bytes) -> Any:
        params.done()
        seq = _seq(_body(raw, {"seq": int}))

        async def run() -> Any:
            if not await self._mesh.delete_dead_letter(seq):
                raise AgentNotFound(f"no dead letter {seq}")
            return {"seq": seq, "deleted": True}

        return await self._act("delete", f"dead letter {seq}", run)


def _letter_json(d: DeadLetter) -> dict[str, Any]:
    out = d.to_wire()
    out["subject"] = d.subject
    data = d.data
    try:
        if d.headers.get(h.ENCODING) == h.ENCODING_DEFLATE:
            data = envelope.inflate(data)  # bounded (MAX_INFLATED)
        out["body"] = preview(codec.decode(data), _BODY_BUDGET)
    except (ValueError, ProtocolError) as exc:
        out["body"] = None
        out["body_error"] = f"not a msgpack body: {exc}"
        out["body_raw"] = preview(d.data[:_BODY_BUDGET], _BODY_BUDGET)
    out["headers"] = {k: v for k, v in sorted(d.headers.items())[:64]}
    return out
