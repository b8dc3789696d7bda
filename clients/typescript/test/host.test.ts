/**
 * The TS host's mailbox, copies and lifecycle (protocol §7.5, §8) against a real
 * nats-server: `NATS_URL` names it (the Python suite runs this file with its server,
 * tests/integration/test_ts_interop.py); skipped without it.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { decode, encode } from "../src/codec.js";
import { AgentNotFound, ClusterAtCapacity, connect, newMessageId } from "../src/index.js";
import type { Mesh } from "../src/index.js";
import type { Inbound } from "../src/transport.js";

const url = process.env["NATS_URL"];
const skip = url ? false : "NATS_URL is not set";
const prefix = `tsh${Math.floor(Math.random() * 1e9)}`;
let mesh: Mesh;
let gate: () => void = () => {};
let held = new Promise<void>((r) => (gate = r));
const order: string[] = [];
let runs = 0;
let inits = 0;
let concurrent = 0;
let maxSeen = 0;

function reopen(): void {
  held = new Promise<void>((r) => (gate = r));
}

const hold = async (): Promise<string> => {
  concurrent += 1;
  maxSeen = Math.max(maxSeen, concurrent);
  await held;
  concurrent -= 1;
  return "released";
};

before(async () => {
  if (!url) return;
  mesh = await connect({ servers: url, prefix, name: "ts-host-test", stopTimeout: 300, maxAgents: 5 });
  await mesh.host("Box", {
    mailboxSize: 3,
    init: async () => {
      inits += 1;
      await new Promise((r) => setTimeout(r, 50));
      return null;
    },
    actions: {
      hold,
      note: { params: { tag: "str" }, handler: ({ tag }) => order.push(tag as string) },
      count: () => ++runs,
    },
  });
  await mesh.host("Pair", { maxConcurrency: 2, actions: { hold } });
  await mesh.host("Manual", { activateOnDemand: false, actions: { ping: () => "pong" } });
});

after(async () => {
  gate();
  await mesh?.close();
});

function raw(subject: string, headers: Record<string, string>, body: unknown = {}): Promise<Inbound> {
  return mesh.transport.request(subject, encode(body), { "Na-Proto": "1", ...headers }, { timeoutMs: 5000 });
}

const status = (m: Inbound): string | undefined => m.headers?.["Na-Status"];

test("a full mailbox answers overloaded at once; priorities order the waiting messages", { skip }, async () => {
  const box = mesh.agent("Box", "b-1");
  await box.call("count"); // active: the messages below arrive in the order sent
  const running = box.call("hold");
  await box.send("note", { tag: "low" }, { priority: "low" });
  await box.send("note", { tag: "high" }, { priority: "high" });
  const refused = await raw(`${prefix}.agent.Box.b-1`, { "Na-Action": "count" });
  assert.equal(status(refused), "overloaded");
  assert.match((decode(refused.data) as { message: string }).message, /mailbox of Box\/b-1 is full \(3\)/);
  gate();
  assert.equal(await running, "released");
  reopen();
  await box.send("note", { tag: "normal" });
  await box.call("count");
  assert.deepEqual(order, ["high", "low", "normal"]);
});

test("copies of a message never run twice; replay returns the kept reply (§7.5, §8.6)", { skip }, async () => {
  const subject = `${prefix}.agent.Box.b-2`;
  const id = newMessageId();
  await mesh.agent("Box", "b-2").call("count"); // active
  const before = runs;
  const first = await raw(subject, { "Na-Action": "count", "Na-Msg-Id": id });
  const copy = await raw(subject, { "Na-Action": "count", "Na-Msg-Id": id });
  const replay = await raw(subject, { "Na-Action": "count", "Na-Msg-Id": id, "Na-Reply-Mode": "replay" });
  assert.equal(runs, before + 1);
  for (const m of [copy, replay]) {
    assert.equal(status(m), "ok");
    assert.deepEqual(m.data, first.data);
  }
  const other = await raw(subject, { "Na-Action": "count", "Na-Msg-Id": id }, { x: 1 });
  assert.equal(status(other), "bad_request");
  assert.match((decode(other.data) as { message: string }).message, /was used for another request/);
  const unknown = await raw(subject, { "Na-Action": "count", "Na-Msg-Id": newMessageId(), "Na-Reply-Mode": "replay" });
  assert.equal(status(unknown), "unavailable");
  assert.deepEqual((decode(unknown.data) as { details: unknown }).details, { retry: true, result: "unknown" });
  assert.equal(runs, before + 1);
});

test("concurrent activations start one agent; maxConcurrency runs handlers side by side", { skip }, async () => {
  const started = inits;
  await Promise.all([1, 2, 3].map(() => mesh.agent("Box", "b-3").call("count")));
  assert.equal(inits, started + 1);
  const pair = mesh.agent("Pair", "p-1");
  const both = [pair.call("hold"), pair.call("hold")];
  while (maxSeen < 2) await new Promise((r) => setTimeout(r, 5));
  gate();
  assert.deepEqual(await Promise.all(both), ["released", "released"]);
  reopen();
});

test("stopping answers the waiting messages unavailable with retry (§8 item 5)", { skip }, async () => {
  const box = mesh.agent("Box", "b-4");
  const running = box.call("hold");
  while (concurrent === 0) await new Promise((r) => setTimeout(r, 5));
  const id = newMessageId();
  const waiting = raw(`${prefix}.agent.Box.b-4`, { "Na-Action": "count", "Na-Msg-Id": id });
  for (;;) {
    // queued: a replay question about it is answered "running" (queued or running)
    const asked = await raw(`${prefix}.agent.Box.b-4`, {
      "Na-Action": "count",
      "Na-Msg-Id": id,
      "Na-Reply-Mode": "replay",
    });
    if ((decode(asked.data) as { details?: { result?: string } }).details?.result === "running") break;
  }
  const stopped = mesh.deactivate("Box", "b-4"); // stopTimeout 300 ms: the holder does not finish
  const answer = await waiting;
  assert.equal(status(answer), "unavailable");
  assert.deepEqual((decode(answer.data) as { details: unknown }).details, { retry: true });
  assert.equal(await stopped, true);
  assert.deepEqual(mesh.hosting.active().includes("Box/b-4"), false);
  gate();
  assert.equal(await running, "released");
  reopen();
});

test("explicit spawn, not_found, and the agent limit (at_capacity)", { skip }, async () => {
  await assert.rejects(mesh.agent("Manual", "m-1").call("ping", {}, { timeout: 2000 }), AgentNotFound);
  await mesh.spawn("Manual", "m-1");
  assert.equal(await mesh.agent("Manual", "m-1").call("ping"), "pong");
  // maxAgents 5: b-1, b-2, b-3, p-1 and m-1 are active (b-4 stopped): one more is refused
  await assert.rejects(mesh.agent("Box", "b-9").call("count", {}, { timeout: 2000 }), ClusterAtCapacity);
});
