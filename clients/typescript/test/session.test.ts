/**
 * Sessions and the caller's loops without a server: session tokens (§19.4, byte for byte
 * against tokens the Python SDK made), the resend after a `partition` answer (§6.4), and
 * reads on the read subject with their minimum version and fallback (§19.1, §19.2). The
 * caller talks to a scripted stand-in for its transport (no NATS here; the interop test
 * runs the same paths against Python hosts on a real server).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Caller } from "../src/caller.js";
import { connect } from "../src/mesh.js";
import type { CallerSettings } from "../src/caller.js";
import { encode } from "../src/codec.js";
import { CallTimeout, ConfigurationError, InvalidSessionToken, PartitionError } from "../src/errors.js";
import { errorReply, okReply } from "../src/reply.js";
import { MAX_TOKEN_AGENTS, MAX_TOKEN_CHARS, MAX_VERSION, Session } from "../src/session.js";
import { NoResponders } from "../src/transport.js";
import type { Inbound, Transport } from "../src/transport.js";
import type { HeaderMap } from "../src/wire.js";

const tokenOf = (items: unknown): string => "s1." + Buffer.from(encode(items)).toString("base64url");

test("the token of §19.4's example", () => {
  const s = new Session();
  s.observe("Cart", "u-1", 42);
  assert.equal(s.token(), "s1.kZOkQ2FydKN1LTEq");
  assert.equal(Session.fromToken("s1.kZOkQ2FydKN1LTEq").version("Cart", "u-1"), 42n);
  assert.equal(new Session().token(), "s1.kA");
});

test("tokens are the Python SDK's, byte for byte (small, 40-bit and 63-bit versions, encoded ids)", () => {
  // natsagents.Session: observe Cart/u-1 42, Board/user@example.com 2**40, K/José 2**63-1,
  // K/x 300, Cart/u-1 43 (raised: now the most recent), then .token()
  const python = "s1.lJOlQm9hcmSwdXNlckBleGFtcGxlLmNvbc8AAAEAAAAAAJOhS6VKb3PDqc9__________5OhS6F4zQEsk6RDYXJ0o3UtMSs";
  const s = new Session();
  s.observe("Cart", "u-1", 42);
  s.observe("Board", "user@example.com", 2 ** 40);
  s.observe("K", "José", MAX_VERSION);
  s.observe("K", "x", 300);
  s.observe("Cart", "u-1", 43n);
  assert.equal(s.token(), python);
  const back = Session.fromToken(python);
  assert.equal(back.version("K", "José"), 2n ** 63n - 1n);
  assert.equal(back.version("Board", "user@example.com"), 2n ** 40n);
  assert.equal(back.version("Cart", "u-1"), 43n);
  assert.equal(back.token(), python);
  // str8 kinds and ids, uint16/uint32/uint64 boundaries: observe Kind_kkk… (55) / iii… (150)
  // 70000, K/éé… (100) 2**32, K/z 2**16
  const wide = new Session();
  wide.observe("Kind_" + "k".repeat(50), "i".repeat(150), 70000);
  wide.observe("K", "é".repeat(100), 2 ** 32);
  wide.observe("K", "z", 2 ** 16);
  const widePython =
    "s1.k5PZN0tpbmRfa2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2vZlmlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpac4AARFwk6FL2cjDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqc8AAAABAAAAAJOhS6F6zgABAAA";
  assert.equal(wide.token(), widePython);
  assert.equal(Session.fromToken(widePython).token(), widePython);
});

test("a session keeps the highest version and forgets the least recently raised", () => {
  const s = new Session({ maxAgents: 2 });
  s.observe("K", "a", 7);
  s.observe("K", "a", 5); // never goes down
  assert.equal(s.version("K", "a"), 7n);
  s.observe("K", "b", 1);
  s.observe("K", "c", 1);
  assert.equal(s.version("K", "a"), 0n);
  assert.equal(s.size, 2);
  assert.throws(() => new Session({ maxAgents: 0 }), ConfigurationError);
  assert.throws(() => s.observe("K", "a", 1.5), ConfigurationError);
});

test("tokens carry the newest agents within their bounds", () => {
  const s = new Session({ maxAgents: 5000 });
  for (let i = 0; i < 1000; i++) s.observe("K", `a${i}`, i + 1);
  const t = s.token();
  assert.ok(t.length <= MAX_TOKEN_CHARS);
  const again = Session.fromToken(t);
  assert.equal(again.size, MAX_TOKEN_AGENTS);
  assert.equal(again.version("K", "a999"), 1000n);
  assert.equal(again.version("K", "a0"), 0n);
});

test("anything that is not a token is refused whole with InvalidSessionToken", () => {
  const garbage: unknown[] = [
    null,
    42,
    new Uint8Array([0x73, 0x31, 0x2e]),
    "",
    "s1.",
    "s2.AAAA",
    "s1.!!!!",
    "s1.=",
    "s1.kA==", // padded
    "s1.kB", // not canonical: the trailing bits are not zero
    "s1.A",
    "s1." + "A".repeat(MAX_TOKEN_CHARS + 1),
    "s1.\u00e9\u00e9",
    tokenOf({ not: "a list" }),
    tokenOf([["K", "a"]]),
    tokenOf([["K", "a", 1, 2]]),
    tokenOf([["bad kind!", "a", 1]]),
    tokenOf([["K", "", 1]]),
    tokenOf([["K", "x".repeat(201), 1]]),
    tokenOf([["K", "a", 0]]),
    tokenOf([["K", "a", -1]]),
    tokenOf([["K", "a", 2n ** 63n]]),
    tokenOf([["K", "a", 1.5]]),
    "s1." + Buffer.from([0x91, 0x93, 0xa1, 0x4b, 0xa1, 0x61, 0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]).toString("base64url"), // 1.0 as a float
    tokenOf([["K", "a", true]]),
    tokenOf([["K", "a", null]]),
    tokenOf(Array.from({ length: MAX_TOKEN_AGENTS + 1 }, () => ["K", "a", 1])),
    tokenOf([[["K"], "a", 1]]),
    tokenOf([{ kind: "K" }]),
    "s1." + Buffer.from([0xc1, 0xc1]).toString("base64url"), // not msgpack
    "s1." + Buffer.from([0x91, 0x93, 0xa1, 0x4b, 0xa2, 0xff, 0xfe, 0x01]).toString("base64url"), // id not UTF-8
    "s1." + Buffer.from([0x91, 0x93, 0xa1, 0x4b, 0xa1, 0x61, 0x01, 0x00]).toString("base64url"), // trailing byte
    "s1." + Buffer.from([0xdd, 0xff, 0xff, 0xff, 0xff]).toString("base64url"), // a huge count, no items
    "s1." + Buffer.from([0x91, 0x93, 0xa1, 0x4b]).toString("base64url"), // truncated
  ];
  for (const token of garbage) {
    assert.throws(
      () => Session.fromToken(token),
      (err: unknown) => err instanceof InvalidSessionToken && err instanceof ConfigurationError,
      String(token).slice(0, 80),
    );
  }
});

// -- the caller's loops, against a scripted transport ------------------------------------

interface Sent {
  subject: string;
  headers: HeaderMap;
  at: number;
}

type Answer = Inbound | NoResponders | ((sent: Sent) => Inbound | NoResponders);

function reply(r: { headers: HeaderMap; body: Uint8Array }, extra: HeaderMap = {}): Inbound {
  return { subject: "_INBOX.x", reply: "", headers: { ...r.headers, ...extra }, data: r.body };
}

const partition = (retryFor: unknown): Inbound =>
  reply(
    errorReply("partition", "node n3 is cut off from the cluster's majority", {
      agent: "K/a",
      details: { node: "n3", state: "quorum_lost", retry_for: retryFor },
    }),
  );

/** A caller whose transport answers each request with the next scripted answer. */
function scripted(answers: Answer[], settings: Partial<CallerSettings> = {}): { caller: Caller; sent: Sent[] } {
  const sent: Sent[] = [];
  const transport = {
    maxPayload: 1024 * 1024,
    request: async (subject: string, _data: Uint8Array, headers: HeaderMap | null): Promise<Inbound> => {
      const s = { subject, headers: { ...(headers ?? {}) }, at: Date.now() };
      sent.push(s);
      let next = answers.length > 1 ? answers.shift()! : answers[0]!;
      if (typeof next === "function") next = next(s);
      if (next instanceof NoResponders) throw next;
      return next;
    },
  } as unknown as Transport;
  const caller = new Caller(transport, {
    prefix: "na",
    name: "unit",
    defaultTimeout: 5_000,
    resendAfter: null,
    compressAbove: null,
    backoffInitial: 5,
    backoffMax: 50,
    readActions: new Map([["Board", new Set(["get"])]]),
    ...settings,
  });
  return { caller, sent };
}

test("a partition answer is resent with the same message id until a copy answers", async () => {
  const { caller, sent } = scripted([partition(5), partition(5), reply(okReply(7))]);
  assert.equal(await caller.invoke("K", "a", "add", {}, {}, false), 7);
  assert.equal(sent.length, 3);
  assert.ok(sent.every((s) => s.subject === "na.agent.K.a"));
  assert.equal(new Set(sent.map((s) => s.headers["Na-Msg-Id"])).size, 1);
  assert.deepEqual(sent[2]!.headers, sent[0]!.headers); // the identical request
});

test("after details.retry_for seconds of partition answers the call fails with PartitionError", async () => {
  const { caller, sent } = scripted([partition(0.2)]);
  const started = Date.now();
  await assert.rejects(caller.invoke("K", "a", "add", {}, {}, false), (err: unknown) => {
    assert.ok(err instanceof PartitionError);
    assert.deepEqual(err.details, { node: "n3", state: "quorum_lost", retry_for: 0.2 });
    assert.equal(err.agent, "K/a");
    assert.equal(err.action, "add");
    return true;
  });
  const took = Date.now() - started;
  assert.ok(took >= 200 && took < 2000, `${took} ms`);
  assert.ok(sent.length >= 3, `${sent.length} requests`);
  assert.equal(new Set(sent.map((s) => s.headers["Na-Msg-Id"])).size, 1);
});

test("a deadline within retry_for ends the call with CallTimeout, not PartitionError", async () => {
  const { caller } = scripted([partition(30)]);
  const started = Date.now();
  await assert.rejects(caller.invoke("K", "a", "add", {}, { timeout: 300 }, false), (err: unknown) => {
    assert.ok(err instanceof CallTimeout && !(err instanceof PartitionError));
    assert.match(err.message, /partition/);
    assert.equal(err.remote, false);
    return true;
  });
  assert.ok(Date.now() - started < 2000);
});

test("a partition answer without a usable retry_for fails at once", async () => {
  for (const retryFor of [undefined, "5", true, -1, 61, Number.NaN, 1e300]) {
    const { caller, sent } = scripted([partition(retryFor), reply(okReply(1))]);
    await assert.rejects(caller.invoke("K", "a", "add", {}, {}, false), PartitionError);
    assert.equal(sent.length, 1, String(retryFor));
  }
});

test("reads go to the read subject with the session's minimum version, and fall back", async () => {
  const session = new Session();
  const { caller, sent } = scripted([
    reply(okReply(1), { "Na-State-Version": "12" }), // the write
    new NoResponders("no responders on na.read.Board.b"), // the read: not active anywhere
    reply(okReply(1), { "Na-State-Version": "12" }),
    reply(okReply(1), { "Na-State-Version": "11", "Na-Replica": "n2" }), // an older replica
    reply(okReply(1), { "Na-State-Version": "1".repeat(20) }), // malformed: ignored
    reply(okReply(1)),
  ]);
  await caller.invoke("Board", "b", "add", {}, { session }, false);
  assert.equal(sent[0]!.subject, "na.agent.Board.b");
  assert.equal(session.version("Board", "b"), 12n);
  assert.equal(caller.session.version("Board", "b"), 0n); // the mesh's own session is another
  await caller.invoke("Board", "b", "get", {}, { session }, false); // declared by readActions
  assert.equal(sent[1]!.subject, "na.read.Board.b");
  assert.equal(sent[1]!.headers["Na-Min-Version"], "12");
  assert.equal(sent[2]!.subject, "na.agent.Board.b"); // the fallback: same request
  assert.deepEqual(sent[2]!.headers, sent[1]!.headers);
  await caller.invoke("Board", "b", "peek", {}, { session, readOnly: true }, false);
  assert.equal(sent[3]!.subject, "na.read.Board.b");
  assert.equal(session.version("Board", "b"), 12n); // never goes back
  await caller.invoke("Board", "b", "get", {}, { session, readOnly: false }, false);
  assert.equal(sent[4]!.subject, "na.agent.Board.b");
  assert.equal(sent[4]!.headers["Na-Min-Version"], undefined);
  await caller.invoke("Board", "b", "get", {}, {}, false); // the mesh's session: no minimum yet
  assert.equal(sent[5]!.subject, "na.read.Board.b");
  assert.equal(sent[5]!.headers["Na-Min-Version"], undefined);
  assert.equal(session.version("Board", "b"), 12n);
  await assert.rejects(caller.invoke("Board", "b", "get", {}, { session: {} as Session }, false), ConfigurationError);
});

test("readActions are checked before connecting", async () => {
  for (const readActions of [{ "1bad": ["get"] }, { Board: ["no-dashes"] }, { Board: "get" }]) {
    await assert.rejects(
      connect({ servers: "nats://127.0.0.1:1", readActions: readActions as unknown as Record<string, string[]> }),
      (err: unknown) => err instanceof ConfigurationError,
    );
  }
});
