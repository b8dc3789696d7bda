/**
 * Parameter declarations of hosted actions and their checks (protocol §5.2-§5.3): the
 * request body must be a map; unknown names, missing required ones and values of the wrong
 * type are `bad_request` with `details: {param, problem}`. Type names in problems are the
 * Python SDK's (`expected int, got str`), so errors read the same from every host.
 */

/** A parameter type: msgpack types under the Python SDK's names. */
export type ParamType = "int" | "float" | "str" | "bytes" | "bool" | "nil" | "list" | "dict" | "datetime" | "any";

/** A declared parameter: a type (or alternatives), and a default that makes it optional. */
export interface ParamSpec {
  type: ParamType | readonly ParamType[];
  /** Taken when the parameter is absent; without it the parameter is required. */
  default?: unknown;
  /** Absent is allowed, and the handler gets no key (a default of `undefined`). */
  optional?: boolean;
}

export const PARAM_TYPES: readonly ParamType[] = [
  "int",
  "float",
  "str",
  "bytes",
  "bool",
  "nil",
  "list",
  "dict",
  "datetime",
  "any",
];

export class ParamError extends Error {
  constructor(
    readonly path: string,
    readonly problem: string,
  ) {
    super(`${path}: ${problem}`);
  }
}

/** The msgpack type name of a decoded value, as the Python SDK names it. */
export function typeName(value: unknown): string {
  if (value === null || value === undefined) return "nil";
  if (typeof value === "boolean") return "bool";
  if (typeof value === "bigint") return "int";
  if (typeof value === "number") return Number.isInteger(value) ? "int" : "float";
  if (typeof value === "string") return "str";
  if (value instanceof Uint8Array) return "bytes";
  if (Array.isArray(value)) return "list";
  if (value instanceof Date) return "datetime";
  return "dict";
}

function fits(type: ParamType, value: unknown): unknown {
  const name = typeName(value);
  switch (type) {
    case "any":
      return value;
    case "float":
      // an int is accepted (and is already a JS number); a bigint becomes a number
      if (name === "int" || name === "float") return typeof value === "bigint" ? Number(value) : value;
      return NOPE;
    default:
      return name === type ? value : NOPE;
  }
}

const NOPE = Symbol("nope");

/** Normalised declarations: name → spec. @throws TypeError for a malformed declaration */
export function normaliseParams(where: string, params: Record<string, ParamType | ParamSpec>): Map<string, ParamSpec> {
  const out = new Map<string, ParamSpec>();
  for (const [name, decl] of Object.entries(params)) {
    const spec: ParamSpec =
      typeof decl === "string" || Array.isArray(decl) ? { type: decl as ParamType } : (decl as ParamSpec);
    const types = Array.isArray(spec.type) ? spec.type : [spec.type];
    if (types.length === 0 || types.some((t) => !PARAM_TYPES.includes(t as ParamType))) {
      throw new TypeError(
        `${where}: parameter ${name} has an unknown type ${JSON.stringify(spec.type)}; use ${PARAM_TYPES.join(", ")}`,
      );
    }
    out.set(name, spec);
  }
  return out;
}

/**
 * Check a decoded body against declared parameters and return the handler's arguments;
 * `declared` `null`: any map is taken as it is.
 * @throws ParamError
 */
export function bindParams(declared: Map<string, ParamSpec> | null, body: unknown): Record<string, unknown> {
  if (body === null || body === undefined) body = {};
  if (typeName(body) !== "dict") throw new ParamError("params", `expected a map of parameters, got ${typeName(body)}`);
  const map = body as Record<string, unknown>;
  if (declared === null) return map;
  for (const key of Object.keys(map)) {
    if (!declared.has(key)) throw new ParamError(key, "unknown parameter");
  }
  const out: Record<string, unknown> = {};
  for (const [name, spec] of declared) {
    if (Object.prototype.hasOwnProperty.call(map, name)) {
      const value = map[name];
      const types = Array.isArray(spec.type) ? spec.type : [spec.type as ParamType];
      let taken: unknown = NOPE;
      for (const t of types) {
        taken = fits(t, value);
        if (taken !== NOPE) break;
      }
      if (taken === NOPE) throw new ParamError(name, `expected ${types.join(" | ")}, got ${typeName(value)}`);
      out[name] = taken;
    } else if ("default" in spec) {
      out[name] = spec.default;
    } else if (!spec.optional) {
      throw new ParamError(name, "missing");
    }
  }
  return out;
}
