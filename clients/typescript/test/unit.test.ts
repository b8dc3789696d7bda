/** Unit checks of the pure parts, against the examples of docs/protocol.md. */
import assert from "node:assert/strict";
import { deflateSync } from "node:zlib";
import { test } from "node:test";
import { decode, encode, inflate, MAX_DEPTH } from "../src/codec.js";
import {
  AgentError,
  BadRequest,
  CallTimeout,
  ClusterAtCapacity,
  ERROR_CODES,
  InvalidAgentId,
  ProtocolError,
  UnknownAction,
  errorForCode,
} from "../src/errors.js";
import { bindParams, normaliseParams, ParamError } from "../src/params.js";
import { errorReply, parseReply } from "../src/reply.js";
import { parseRequest } from "../src/request.js";
import {
  MALFORMED,
  decodeId,
  encodeId,
  headersSize,
  isReplySubject,
  newMessageId,
  parseHeaderBlock,
} from "../src/wire.js";

const te = new TextEncoder();

test("id tokens: the table of §2", () => {
  const table: [string, string][] = [
    ["c-1", "c-1"],
    ["Order_42", "Order_42"],
    ["user@example.com", "=dXNlckBleGFtcGxlLmNvbQ"],
    ["José", "=Sm9zw6k"],
    ["名前", "=5ZCN5YmN"],
    ["order 42/line 3", "=b3JkZXIgNDIvbGluZSAz"],
    ["a.b", "=YS5i"],
    ["=x", "=PXg"],
  ];
  for (const [id, token] of table) {
    assert.equal(encodeId(id), token);
    assert.equal(decodeId(token), id);
  }
  assert.throws(() => decodeId("=YzE"), InvalidAgentId); // "c1" encoded: not canonical
  assert.throws(() => encodeId(""), InvalidAgentId);
  assert.throws(() => encodeId("\ud800"), InvalidAgentId);
  assert.throws(() => encodeId("x".repeat(201)), InvalidAgentId);
  assert.throws(() => encodeId("é".repeat(200)), InvalidAgentId); // 400 bytes: its token is too long
  assert.equal(encodeId("é".repeat(112)).length, 300);
});

test("the header block of §11.1 is 120 bytes", () => {
  const h = {
    "Na-Proto": "1",
    "Na-Action": "add",
    "Na-Msg-Id": "Zt3qXv9LbQ2mWc7RkP4sHA",
    "Na-Deadline": "1893456000000",
    "Na-Caller": "cli",
  };
  assert.equal(headersSize(h), 120);
  assert.deepEqual(Buffer.from(encode({ by: 2 })), Buffer.from([0x81, 0xa2, 0x62, 0x79, 0x02]));
});

test("header blocks are read as §3 says, never throwing", () => {
  const block = parseHeaderBlock(
    te.encode("NATS/1.0 503\r\nNats-Subject: a.b\r\nbad line\r\nna me: x\r\nNa-Action: add\r\n\r\n"),
  );
  assert.equal(block["Status"], "503");
  assert.equal(block["Na-Action"], "add");
  assert.equal(block["na me"], undefined);
  assert.ok(MALFORMED in parseHeaderBlock(te.encode("HTTP/1.1\r\n\r\n")));
  assert.ok(MALFORMED in parseHeaderBlock(te.encode("NATS/1.0x\r\n\r\n")));
  const bad = parseHeaderBlock(
    new Uint8Array([...te.encode("NATS/1.0\r\nNa-Action: a"), 0xff, ...te.encode("\r\n\r\n")]),
  );
  assert.equal(bad["Na-Action"], "a\ufffd");
});

test("request headers are validated in the order of §4.1", () => {
  assert.throws(() => parseRequest({ [MALFORMED]: "x" }), /malformed NATS header block/);
  assert.throws(() => parseRequest({ "Na-Proto": "2", "Na-Action": "-" }), /protocol version/);
  assert.throws(() => parseRequest({ "Na-Msg-Id": "bad id" }), /missing Na-Action/);
  assert.throws(() => parseRequest({ "Na-Action": "a-b" }), /malformed Na-Action/);
  assert.throws(() => parseRequest({ "Na-Action": "a", "Na-Msg-Id": "a b", "Na-Deadline": "x" }), /Na-Msg-Id/);
  assert.throws(() => parseRequest({ "Na-Action": "a", "Na-Corr-Id": "?" }), /Na-Corr-Id/);
  assert.throws(() => parseRequest({ "Na-Action": "a", "Na-Deadline": "1".repeat(16) }), /Na-Deadline/);
  assert.throws(() => parseRequest({ "Na-Action": "a", "Na-Reply-Mode": "replay" }), /Na-Reply-Mode/);
  assert.throws(() => parseRequest({ "Na-Action": "a", "Na-Caller": "é".repeat(257) }), /Na-Caller/);
  const meta = parseRequest({ "Na-Action": "add", "Na-Msg-Id": "m1", "Na-Deadline": "12" });
  assert.equal(meta.correlationId, "m1");
  assert.equal(meta.deadline, 12);
});

test("bodies are decoded within the limits of §5.4", () => {
  assert.equal(decode(new Uint8Array(0)), null);
  const deep = new Uint8Array(MAX_DEPTH + 2).fill(0x91);
  deep[deep.length - 1] = 0xc0;
  assert.throws(() => decode(deep), /nested deeper than 1024 levels/);
  const ok = new Uint8Array(MAX_DEPTH + 1).fill(0x91);
  ok[ok.length - 1] = 0xc0;
  decode(ok);
  assert.throws(() => decode(new Uint8Array([0x92, 0xc0, 0xc0]), 2), /more than 2 objects/);
  assert.throws(() => decode(new Uint8Array([0xc0, 0xc0])), /1 bytes after its value/);
  assert.throws(() => decode(new Uint8Array([0xd4, 0x05, 0x00])), /extension type 5 is not allowed/);
  assert.throws(() => decode(new Uint8Array([0xa1, 0xff])), /not valid UTF-8/);
  assert.throws(() => decode(new Uint8Array([0x92, 0xc0])), /truncated/);
  assert.throws(() => decode(new Uint8Array([0xc1])), ProtocolError);
  assert.deepEqual(decode(encode({ a: [1, 2.5, "x", new Uint8Array([1])] })), {
    a: [1, 2.5, "x", new Uint8Array([1])],
  });
  assert.equal(decode(encode(2n ** 60n)), 2n ** 60n);
  assert.equal(decode(encode(2 ** 40)), 2 ** 40);
  assert.equal(encode(1893456000000)[0], 0xcf); // Unix ms travel as integers, not floats
  assert.equal(encode(-(2 ** 40))[0], 0xd3);
  assert.deepEqual(decode(encode({ a: 2n ** 63n - 1n, b: 1893456000000, c: [2.5] })), {
    a: 2n ** 63n - 1n,
    b: 1893456000000,
    c: [2.5],
  });
  const when = new Date(1893456000123);
  assert.deepEqual(decode(encode(when)), when);
});

test("compressed bodies follow §9.1", () => {
  const body = encode({ text: "x".repeat(10_000) });
  const packed = deflateSync(body);
  assert.deepEqual(Buffer.from(inflate(packed)), Buffer.from(body));
  assert.throws(() => inflate(packed.subarray(0, packed.length - 3)), /truncated/);
  assert.throws(() => inflate(Buffer.concat([packed, Buffer.from([1, 2])])), /2 bytes after the end/);
  assert.throws(() => inflate(deflateSync(Buffer.alloc(5_000_000))), /expands beyond 4194304 bytes/);
  assert.throws(() => inflate(Buffer.from("garbage")), /not a valid deflate/);
});

test("error replies map to one class per code (§6.3)", () => {
  assert.equal(ERROR_CODES.length, 13);
  const reply = errorReply("unknown_action", "Counter has no action 'sub'", {
    agent: "Counter/c-1",
    action: "sub",
    details: { actions: ["add", "get"] },
  });
  // the body of §11.4, byte for byte
  assert.equal(
    Buffer.from(reply.body).toString("hex"),
    (
      "85 a4 63 6f 64 65 ae 75 6e 6b 6e 6f 77 6e 5f 61 63 74 69 6f 6e a7 6d 65 73 73 61 67 65 bb " +
      "43 6f 75 6e 74 65 72 20 68 61 73 20 6e 6f 20 61 63 74 69 6f 6e 20 27 73 75 62 27 a5 61 67 " +
      "65 6e 74 ab 43 6f 75 6e 74 65 72 2f 63 2d 31 a6 61 63 74 69 6f 6e a3 73 75 62 a7 64 65 74 " +
      "61 69 6c 73 81 a7 61 63 74 69 6f 6e 73 92 a3 61 64 64 a3 67 65 74"
    ).replaceAll(" ", ""),
  );
  const msg = { subject: "_INBOX.x", reply: "", headers: reply.headers, data: reply.body };
  assert.throws(
    () => parseReply(msg, null, null, 1 << 20),
    (e: unknown) => e instanceof UnknownAction && e.details["actions"] !== undefined && e.remote,
  );
  assert.ok(errorForCode("timeout", "t") instanceof CallTimeout);
  assert.ok(errorForCode("at_capacity", "t") instanceof ClusterAtCapacity);
  const unknown = errorForCode("brand_new", "t");
  assert.ok(unknown instanceof AgentError && unknown.code === "brand_new");
  // a body that is not a map: the code is the message
  assert.throws(
    () =>
      parseReply(
        { subject: "", reply: "", headers: { "Na-Status": "bad_request" }, data: encode([1]) },
        null,
        null,
        1 << 20,
      ),
    (e: unknown) => e instanceof BadRequest && e.message === "bad_request",
  );
  assert.throws(
    () => parseReply({ subject: "", reply: "", headers: {}, data: new Uint8Array() }, null, null, 1 << 20),
    ProtocolError,
  );
});

test("parameters are checked as §5.3 says", () => {
  const spec = normaliseParams("K.a", {
    by: { type: "int", default: 1 },
    x: { type: ["float", "nil"], optional: true },
    name: "str",
  });
  assert.deepEqual(bindParams(spec, { name: "n" }), { by: 1, name: "n" });
  assert.deepEqual(bindParams(spec, { name: "n", x: 2 }), { by: 1, name: "n", x: 2 });
  const problem = (body: unknown): [string, string] => {
    try {
      bindParams(spec, body);
    } catch (e) {
      assert.ok(e instanceof ParamError);
      return [e.path, e.problem];
    }
    throw new Error("accepted");
  };
  assert.deepEqual(problem({}), ["name", "missing"]);
  assert.deepEqual(problem({ name: "n", zz: 1 }), ["zz", "unknown parameter"]);
  assert.deepEqual(problem({ name: 3 }), ["name", "expected str, got int"]);
  assert.deepEqual(problem({ name: "n", by: true }), ["by", "expected int, got bool"]);
  assert.deepEqual(problem([1]), ["params", "expected a map of parameters, got list"]);
  assert.throws(() => normaliseParams("K.a", { a: "integer" as never }), TypeError);
});

test("reply subjects and message ids", () => {
  assert.ok(isReplySubject("_INBOX.abc.1"));
  for (const s of [
    "$KV.x",
    "_INBOX.a..b",
    "_INBOX.*",
    "_INBOX.>",
    "_INBOX.a.",
    "_INBOX.a b",
    "_INBOX." + "x".repeat(300),
  ]) {
    assert.equal(isReplySubject(s), false, s);
  }
  const ids = new Set(Array.from({ length: 1000 }, () => newMessageId()));
  assert.equal(ids.size, 1000);
  for (const id of ids) assert.match(id, /^[A-Za-z0-9_-]{22}$/);
});
