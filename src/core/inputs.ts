/**
 * Typed input readers shared by every action and the CLI.
 *
 * An InputSource only answers "what string was given for this name"; defaults live in action.yml (the runner
 * applies them for actions, the CLI applies them from the same file), so parsing here never invents a default
 * unless the caller passes one explicitly.
 */

/**
 * What the user gave and can fix: an input, a CLI flag, an environment variable the workflow sets, or a path or
 * reference in one of them that names nothing usable. Exit 2, no stack; the message names the setting and says
 * how to fix it. The other side of the rule is ActionError (core/run.ts): what the world did, exit 1.
 *
 * Thrown wherever the mistake is found, also in main (a `path` that does not exist is found when it is opened):
 * runMain reports it the same way. Never wrap one in an ActionError.
 */
export class InputError extends Error {
  constructor(
    /** The input, flag or variable name. */
    readonly input: string,
    message: string,
    /** Where the setting came from: an action input (or its CLI flag), or an environment variable. */
    readonly origin: 'input' | 'environment' = 'input',
  ) {
    super(`${origin === 'input' ? `Input '${input}'` : `Environment variable ${input}`}: ${message}`);
    this.name = 'InputError';
  }
}

export interface InputSource {
  /** The raw value, or undefined when the input was not given (an empty string counts as not given). */
  get(name: string): string | undefined;
}

/** Inputs as the Actions runner passes them: INPUT_<NAME> with spaces turned into underscores, upper-cased. */
export class EnvInputSource implements InputSource {
  constructor(private readonly env: NodeJS.ProcessEnv = process.env) {}

  get(name: string): string | undefined {
    const value = this.env[`INPUT_${name.replace(/ /g, '_').toUpperCase()}`];
    const trimmed = value?.trim();
    return trimmed ? trimmed : undefined;
  }
}

/** Inputs from a plain map (CLI flags after defaults were applied, tests). */
export class MapInputSource implements InputSource {
  private readonly values: Map<string, string>;

  constructor(values: Record<string, string | undefined> | Map<string, string>) {
    this.values = new Map();
    const entries = values instanceof Map ? values.entries() : Object.entries(values);
    for (const [k, v] of entries) {
      if (v !== undefined && v.trim() !== '') this.values.set(k, v.trim());
    }
  }

  get(name: string): string | undefined {
    return this.values.get(name);
  }
}

/*
 * The readers take the action.yml default as `fallback` where the input has one: the runner passes it anyway,
 * but an input given as '' counts as not given. A reader given a fallback returns a value (no `!` at the call
 * site); a unit test (action-metadata.test.ts) proves every fallback equals the action.yml default.
 */

export function readString(src: InputSource, name: string): string | undefined;
export function readString(src: InputSource, name: string, fallback: string): string;
export function readString(src: InputSource, name: string, fallback?: string): string | undefined {
  return src.get(name) ?? fallback;
}

export function readRequiredString(src: InputSource, name: string): string {
  const value = src.get(name);
  if (value === undefined) throw new InputError(name, 'is required but was not given.');
  return value;
}

const TRUE_WORDS = new Set(['true', 'yes', 'on', '1']);
const FALSE_WORDS = new Set(['false', 'no', 'off', '0']);

export function readBoolean(src: InputSource, name: string, fallback: boolean): boolean {
  const value = src.get(name);
  if (value === undefined) return fallback;
  const lower = value.toLowerCase();
  if (TRUE_WORDS.has(lower)) return true;
  if (FALSE_WORDS.has(lower)) return false;
  throw new InputError(name, `expected true or false (also yes/no), got '${value}'.`);
}

/** A list given one item per line or comma separated; blank items and '#' comment lines are dropped. */
export function readList(src: InputSource, name: string): string[] {
  const value = src.get(name);
  if (value === undefined) return [];
  return value
    .split(/[\n,]/)
    .map((s) => s.trim())
    .filter((s) => s !== '' && !s.startsWith('#'));
}

export interface IntegerBounds {
  min?: number;
  max?: number;
}

export function readInteger(src: InputSource, name: string, fallback: number, bounds?: IntegerBounds): number;
export function readInteger(
  src: InputSource,
  name: string,
  fallback: undefined,
  bounds?: IntegerBounds,
): number | undefined;
export function readInteger(
  src: InputSource,
  name: string,
  fallback: number | undefined,
  bounds: IntegerBounds = {},
): number | undefined {
  const value = src.get(name);
  if (value === undefined) return fallback;
  if (!/^-?\d+$/.test(value)) throw new InputError(name, `expected a whole number, got '${value}'.`);
  const n = Number(value);
  if (bounds.min !== undefined && n < bounds.min) {
    throw new InputError(name, `must be at least ${bounds.min}, got ${n}.`);
  }
  if (bounds.max !== undefined && n > bounds.max) {
    throw new InputError(name, `must be at most ${bounds.max}, got ${n}.`);
  }
  return n;
}

export function readEnum<T extends string>(
  src: InputSource,
  name: string,
  allowed: readonly T[],
  fallback: T,
): T {
  const value = src.get(name);
  if (value === undefined) return fallback;
  const lower = value.toLowerCase();
  const match = allowed.find((a) => a === lower);
  if (match === undefined) {
    throw new InputError(name, `must be one of ${allowed.join(', ')}; got '${value}'.`);
  }
  return match;
}

const DURATION_UNITS_MS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};

/**
 * Parses `90m`, `1h30m`, `7d`, `500ms` or `0`; returns milliseconds. A bare number other than 0 has no unit and
 * is not a duration (as in Go's time.ParseDuration, which podman and docker use): `2` could mean 2 s or 2 h.
 */
export function parseDuration(text: string): number | undefined {
  const trimmed = text.trim();
  if (trimmed === '0') return 0;
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d|w)/gy;
  let total = 0;
  let consumed = 0;
  for (const m of trimmed.matchAll(re)) {
    total += Number(m[1]) * DURATION_UNITS_MS[m[2]!]!;
    consumed += m[0].length;
  }
  if (consumed === 0 || consumed !== trimmed.length) return undefined;
  return Math.round(total);
}

export function readDuration(src: InputSource, name: string): number | undefined;
export function readDuration(src: InputSource, name: string, fallbackMs: number): number;
export function readDuration(src: InputSource, name: string, fallbackMs?: number): number | undefined {
  const value = src.get(name);
  if (value === undefined) return fallbackMs;
  const ms = parseDuration(value);
  if (ms !== undefined) return ms;
  if (/^\d+(?:\.\d+)?$/.test(value)) {
    throw new InputError(name, `'${value}' has no unit; write ${value}s, ${value}m, ${value}h or ${value}d.`);
  }
  throw new InputError(name, `expected a duration like 90s, 30m, 1h or 7d; got '${value}'.`);
}

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1000,
  kb: 1000,
  kib: 1024,
  m: 1000 ** 2,
  mb: 1000 ** 2,
  mib: 1024 ** 2,
  g: 1000 ** 3,
  gb: 1000 ** 3,
  gib: 1024 ** 3,
  t: 1000 ** 4,
  tb: 1000 ** 4,
  tib: 1024 ** 4,
};

/** Parses `5MiB`, `512k`, `2GB`, or a bare byte count; returns bytes. */
export function parseBytes(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(text.trim());
  if (!m) return undefined;
  const unit = SIZE_UNITS[m[2]!.toLowerCase()];
  if (unit === undefined) return undefined;
  return Math.round(Number(m[1]) * unit);
}

/**
 * A size from an environment variable (`50GiB`, `500MB`), undefined when unset. It needs a unit: a bare `20`
 * could mean 20 GB as well as the 20 bytes it would be, so it is a mistake in the workflow, refused by name.
 */
export function readSizeEnv(name: string, env: NodeJS.ProcessEnv = process.env): number | undefined {
  const raw = env[name]?.trim();
  if (!raw) return undefined;
  const bare = /^\d+(?:\.\d+)?$/.test(raw);
  const bytes = bare ? undefined : parseBytes(raw);
  if (bytes !== undefined) return bytes;
  throw new InputError(
    name,
    bare
      ? `'${raw}' has no unit; write ${raw}GiB, ${raw}GB or ${raw}MiB.`
      : `'${raw}' is not a size; write it like 50GiB or 500MB.`,
    'environment',
  );
}

export function readBytes(src: InputSource, name: string, fallback: number): number {
  const value = src.get(name);
  if (value === undefined) return fallback;
  const bytes = parseBytes(value);
  if (bytes === undefined)
    throw new InputError(name, `expected a size like 5MiB, 512k or 2GB; got '${value}'.`);
  return bytes;
}
