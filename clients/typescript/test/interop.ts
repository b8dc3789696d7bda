/**
 * Interop scenarios run by the Python suite (tests/integration/test_ts_interop.py) against
 * a real nats-server and Python-hosted agents. Each prints one JSON line of results (the
 * `host` scenario prints `{"ready": true}` first, then its results once stdin closes).
 *
 *   node dist/test/interop.js call    <url> <prefix>   the Python kind PyCounter, core NATS
 *   node dist/test/interop.js durable <url> <prefix>   exactly-once sends to PyCounter
 *   node dist/test/interop.js host    <url> <prefix>   host TsCounter until stdin closes
 *   NA_USER=… NA_PASS=… node dist/test/interop.js perm <url> <prefix>   publishes the server refuses
 *   node dist/test/interop.js partition <url> <prefix> PyPaused copies that answer `partition` (§6.4)
 *   NA_TOKEN=… node dist/test/interop.js session <url> <prefix>   PyBoard reads through a replica (§19)
 *   node dist/test/interop.js bench   <url> <prefix>   calls/s to PyCounter beside raw nats.js (not in the suite)
 */
import {
  AgentError,
  AgentNotFound,
  BadRequest,
  CallTimeout,
  HandlerError,
  Unavailable,
  UnknownAction,
  connect,
  currentContext,
} from "../src/index.js";
import type { Mesh } from "../src/index.js";

type Result = Record<string, unknown>;

function describe(err: unknown): Result {
  if (err instanceof AgentError) {
    return {
      class: err.constructor.name,
      code: err.code,
      message: err.message,
      agent: err.agent,
      action: err.action,
      details: err.details,
      remote: err.remote,
      has_traceback: Boolean(err.remoteTraceback),
    };
  }
  return { class: (err as Error)?.constructor?.name ?? typeof err, message: String(err) };
}

async function caught(p: Promise<unknown>): Promise<Result> {
  try {
    return { ok: (await p) ?? null };
  } catch (err) {
    return describe(err);
  }
}

async function callScenario(mesh: Mesh): Promise<Result> {
  const out: Result = {};
  const c = mesh.agent("PyCounter", "c-1");
  out["add"] = await c.call("add", { by: 2 });
  const deadline = Date.now() + 5000;
  out["request"] = await c.request("add", { by: 3 }, { deadline });
  out["seen_deadline"] = ((await c.call("whoami", {}, { deadline })) as Result)["deadline"] === deadline / 1000;
  await c.send("add", { by: 10 });
  await c.send("add", { by: 100 }, { ack: false });
  // the fire-and-forget message is queued behind nothing else: poll until it ran
  let total = 0;
  for (let i = 0; i < 100 && total !== 115; i++) {
    total = (await c.call("get")) as number;
    if (total !== 115) await new Promise((r) => setTimeout(r, 20));
  }
  out["after_sends"] = total;
  out["unknown_action"] = await caught(c.call("nope"));
  out["bad_param"] = await caught(c.call("add", { by: "two" }));
  out["handler_error"] = await caught(c.call("fail"));
  out["timeout"] = await caught(c.call("slow", { ms: 1500 }, { timeout: 300 }));
  out["no_host"] = await caught(mesh.agent("NoSuchKind", "x").call("get", {}, { timeout: 300 }));
  out["not_found"] = await caught(mesh.agent("PyLazy", "x").call("get", {}, { timeout: 2000 }));
  const small = mesh.agent("PySmall", "s-1");
  await small.call("slow", { ms: 1 }); // active, so both requests below reach its mailbox at once
  const first = small.call("slow", { ms: 400 });
  out["overloaded"] = await caught(small.call("slow", { ms: 1 }));
  out["overloaded_first"] = await first;
  out["unauthorized"] = await caught(mesh.agent("PyVault", "v-1").call("get"));
  out["big"] = ((await mesh.agent("PyCounter", "b-1").call("echo", { value: "y".repeat(100_000) })) as string).length;
  out["connect_refused"] = await caught(connect({ servers: "nats://127.0.0.1:1" }));
  const who = (await mesh.agent("PyCounter", "user@example.com/1").call(
    "whoami",
    {},
    {
      traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
      tracestate: "k=v",
    },
  )) as Result;
  out["whoami"] = who;
  // Trace context across hops: TS caller -> Python host -> TS host, and TS caller -> TS host -> Python host.
  await mesh.host("TsEcho", {
    actions: {
      whoami: (_p, ctx) => ({ traceparent: ctx.traceparent, caller: ctx.caller, deadline: ctx.deadline }),
      relay: async () => mesh.agent("PyCounter", "p-2").call("whoami"),
    },
  });
  const trace = { traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", deadline: Date.now() + 8000 };
  out["via_python"] = await mesh
    .agent("PyCounter", "p-1")
    .call("relay", { kind: "TsEcho", id: "e-1", action: "whoami" }, trace);
  out["via_ts"] = await mesh.agent("TsEcho", "e-2").call("relay", {}, trace);
  out["trace_deadline"] = trace.deadline;
  out["local_errors"] = {
    bad_kind: await caught(Promise.resolve().then(() => mesh.agent("1bad", "x"))),
    instance_of: {
      unknown: (await caught(c.call("nope"))).class === UnknownAction.name,
      classes: [BadRequest, CallTimeout, HandlerError, Unavailable, AgentNotFound].map((k) => k.name),
    },
  };
  // §7.4: a request unanswered within resendAfter is published again; the host runs it once
  const resending = await connect({
    servers: process.argv[3],
    prefix: process.argv[4],
    resendAfter: 100,
    name: "ts-resend",
  });
  try {
    out["resend_result"] = await resending.agent("PyCounter", "slow-1").call("slow", { ms: 700 }, { timeout: 5000 });
    out["resends"] = resending.resends;
  } finally {
    await resending.close();
  }
  return out;
}

async function durableScenario(mesh: Mesh): Promise<Result> {
  const out: Result = {};
  const ref = mesh.agent("PyCounter", "d-1").withOptions({ delivery: "exactly_once", timeout: 20_000 });
  const first = await ref.call("add", { by: 1 }, { messageId: "ts-durable-1" });
  // the same logical message again: stored once (a duplicate PubAck), the earlier result replayed
  const again = await ref.call("add", { by: 1 }, { messageId: "ts-durable-1" });
  const second = await ref.call("add", { by: 1 });
  await ref.send("add", { by: 1 }); // stored; no result awaited
  out["first"] = first;
  out["again"] = again;
  out["second"] = second;
  let total = 0;
  for (let i = 0; i < 200 && total !== 3; i++) {
    total = (await mesh.agent("PyCounter", "d-1").call("get")) as number;
    if (total !== 3) await new Promise((r) => setTimeout(r, 25));
  }
  out["total"] = total;
  // A mesh whose inbox stream does not exist yet: refused without creating it, stored after.
  const fresh = `${process.argv[4]}x`;
  const strict = await connect({ servers: process.argv[3], prefix: fresh, createStreams: false });
  try {
    const started = Date.now();
    out["no_stream"] = await caught(
      strict.agent("PyCounter", "n-1").withOptions({ delivery: "at_least_once" }).send("add", {}, { timeout: 500 }),
    );
    out["no_stream_ms"] = Date.now() - started;
  } finally {
    await strict.close();
  }
  const creating = await connect({ servers: process.argv[3], prefix: fresh });
  try {
    out["created"] = await caught(
      creating.agent("PyCounter", "n-1").withOptions({ delivery: "at_least_once" }).send("add"),
    );
  } finally {
    await creating.close();
  }
  return out;
}

async function hostScenario(mesh: Mesh): Promise<Result> {
  const stats = { adds: 0, slow: 0, starts: 0, stops: 0 };
  await mesh.host<{ n: number }>("TsCounter", {
    init: () => {
      stats.starts += 1;
      return { n: 0 };
    },
    onStop: () => {
      stats.stops += 1;
    },
    actions: {
      add: {
        params: { by: { type: "int", default: 1 } },
        handler: ({ by }, ctx) => {
          stats.adds += 1;
          ctx.state.n += by as number;
          return ctx.state.n;
        },
      },
      get: (_p, ctx) => ctx.state.n,
      fail: () => {
        throw new RangeError("boom");
      },
      slow_add: {
        params: { ms: "int" },
        handler: async ({ ms }, ctx) => {
          stats.slow += 1;
          await new Promise((r) => setTimeout(r, ms as number));
          ctx.state.n += 1;
          return ctx.state.n;
        },
      },
      whoami: (_p, ctx) => ({
        id: ctx.id,
        agent: ctx.agent,
        caller: ctx.caller,
        deadline: ctx.deadline,
        traceparent: ctx.traceparent,
        message_id: ctx.messageId,
      }),
      echo: { params: { value: "any" }, handler: ({ value }) => value },
      relay: {
        params: { kind: "str", id: "str", action: "str" },
        // a call made inside a handler inherits its deadline and trace context
        handler: async ({ kind, id, action }) => mesh.agent(kind as string, id as string).call(action as string),
      },
      context_seen: () => currentContext()?.agent ?? null,
    },
  });
  await mesh.host("TsLazy", { activateOnDemand: false, actions: { get: () => 1 } });
  process.stdout.write(JSON.stringify({ ready: true }) + "\n");
  await new Promise<void>((resolve) => {
    process.stdin.on("end", resolve);
    process.stdin.on("close", resolve);
    process.stdin.resume();
  });
  const active = mesh.hosting.active();
  const dropped = mesh.hosting.droppedReplies;
  await mesh.close();
  return { ...stats, active, dropped_replies: dropped };
}

async function permScenario(mesh: Mesh): Promise<Result> {
  const out: Result = {};
  out["allowed"] = await mesh.agent("Counter", "a").call("add");
  const started = Date.now();
  out["refused"] = await caught(mesh.agent("Ledger", "x").call("add", {}, { timeout: 5000 }));
  out["refused_activation"] = await caught(mesh.agent("Quiet", "q").call("add", {}, { timeout: 5000 }));
  out["refused_ms"] = Date.now() - started;
  return out;
}

/**
 * PyPaused agents whose Python node answers `partition` (§6.4): `recover` for its first
 * copies only, `stuck` always with `retry_for` 0.3 s, `deadline` always with `retry_for` 30 s.
 */
async function partitionScenario(mesh: Mesh): Promise<Result> {
  const out: Result = {};
  let started = Date.now();
  out["recover"] = await caught(mesh.agent("PyPaused", "recover").call("add"));
  out["recover_ms"] = Date.now() - started;
  started = Date.now();
  out["stuck"] = await caught(mesh.agent("PyPaused", "stuck").call("add"));
  out["stuck_ms"] = Date.now() - started;
  started = Date.now();
  out["deadline"] = await caught(mesh.agent("PyPaused", "deadline").call("add", {}, { timeout: 400 }));
  out["deadline_ms"] = Date.now() - started;
  return out;
}

/**
 * Session consistency through PyBoard's read replica (§19), the replica held back at an old
 * version by the Python side: a token made in Python (`NA_TOKEN`) keeps read-your-writes
 * here, and this client's own session's token goes back to Python (`ts_token`).
 */
async function sessionScenario(mesh: Mesh): Promise<Result> {
  const out: Result = {};
  const board = mesh.agent("PyBoard", "b");
  const reads = async (n: number, options: Parameters<typeof board.call>[2]): Promise<number[]> => {
    const seen: number[] = [];
    for (let i = 0; i < n; i++) seen.push((await board.call("get", {}, options)) as number);
    return seen;
  };
  const fromPython = mesh.session({ token: process.env["NA_TOKEN"] ?? "" });
  out["python_token_again"] = fromPython.token(); // the same text: one format
  out["python_version"] = fromPython.version("PyBoard", "b").toString();
  out["with_python_token"] = await reads(20, { session: fromPython });
  // New sessions each time (no minimum version): the held replica answers some of them.
  const fresh: number[] = [];
  for (let i = 0; i < 20; i++) fresh.push(...(await reads(1, { session: mesh.session() })));
  out["fresh_sessions"] = fresh;
  const mine = mesh.session();
  out["ts_write"] = await board.call("add", { by: 1 }, { session: mine });
  out["ts_version"] = mine.version("PyBoard", "b").toString();
  out["with_ts_session"] = await reads(20, { session: mine });
  out["ts_token"] = mine.token();
  // An explicit readOnly: false goes to the agent subject (the primary).
  out["primary_read"] = await board.call("get", {}, { session: mesh.session(), readOnly: false });
  // A read of an agent that is not active: nobody serves its read subject; the agent
  // subject activates it.
  out["inactive_read"] = await caught(mesh.agent("PyBoard", "fresh").call("get", {}, { readOnly: true }));
  out["bad_tokens"] = ["s1.garbage!", "x".repeat(100_000), "s1.kZOkQ2FydKN1LTEq".slice(0, -3) + "@@@"].map((t) => {
    try {
      mesh.session({ token: t });
      return "accepted";
    } catch (err) {
      return (err as Error).constructor.name;
    }
  });
  return out;
}

/** Sequential calls per second: the client against a Python agent, and raw nats.js request/reply. */
async function benchScenario(mesh: Mesh): Promise<Result> {
  const n = Number(process.env["NA_BENCH_N"] ?? "2000");
  const ref = mesh.agent("PyCounter", "bench");
  await ref.call("get");
  let t = performance.now();
  for (let i = 0; i < n; i++) await ref.call("get");
  const client = n / ((performance.now() - t) / 1000);
  const nc = mesh.transport.nc;
  const sub = nc.subscribe("bench.raw", {
    callback: (_e, m) => {
      m.respond(m.data);
    },
  });
  await nc.flush();
  t = performance.now();
  for (let i = 0; i < n; i++) await nc.request("bench.raw", new Uint8Array([0xc0]), { timeout: 5000 });
  const raw = n / ((performance.now() - t) / 1000);
  sub.unsubscribe();
  return { n, client_calls_per_s: Math.round(client), raw_requests_per_s: Math.round(raw) };
}

async function main(): Promise<void> {
  const [scenario, url, prefix] = process.argv.slice(2);
  const user = process.env["NA_USER"];
  const mesh = await connect({
    servers: url!,
    prefix: prefix!,
    name: "ts-interop",
    node: "ts-node-1",
    readActions: { PyBoard: ["get"] },
    ...(user ? { inboxPrefix: `_INBOX.${user}`, nats: { user, pass: process.env["NA_PASS"] ?? "" } } : {}),
  });
  let result: Result;
  try {
    if (scenario === "call") result = await callScenario(mesh);
    else if (scenario === "durable") result = await durableScenario(mesh);
    else if (scenario === "host") result = await hostScenario(mesh);
    else if (scenario === "perm") result = await permScenario(mesh);
    else if (scenario === "partition") result = await partitionScenario(mesh);
    else if (scenario === "session") result = await sessionScenario(mesh);
    else if (scenario === "bench") result = await benchScenario(mesh);
    else throw new Error(`unknown scenario ${scenario}`);
  } finally {
    await mesh.close();
  }
  process.stdout.write(JSON.stringify(result, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v)) + "\n");
}

main().catch((err: unknown) => {
  process.stdout.write(JSON.stringify({ error: describe(err) }) + "\n");
  process.exit(1);
});
