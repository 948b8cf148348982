/**
 * Cache keys: how they are built, and the one check of what the cache service refuses. @actions/cache throws a
 * ValidationError for a key over 512 characters or with a comma (the service joins restore keys with commas);
 * a unit test holds MAX_CACHE_KEY_LENGTH to the installed library. An input that becomes part of keys is
 * checked when it is read, so the mistake is an InputError naming it, not a failed save at the end of the job.
 */
import { createHash } from 'node:crypto';
import { InputError, readString, type InputSource } from './inputs.js';

export const MAX_CACHE_KEY_LENGTH = 512;

export interface CacheKeyParts {
  prefix: string;
  os?: string;
  arch?: string;
  /** hashed (sha256, 12 hex) into the key */
  inputs?: Record<string, string>;
  suffix?: string;
}

const RUNNER_OS_NAMES: Partial<Record<NodeJS.Platform, string>> = {
  linux: 'Linux',
  darwin: 'macOS',
  win32: 'Windows',
};
const RUNNER_ARCH_NAMES: Record<string, string> = { x64: 'X64', arm64: 'ARM64', arm: 'ARM', ia32: 'X86' };

function runnerOs(env: NodeJS.ProcessEnv): string {
  return env.RUNNER_OS || RUNNER_OS_NAMES[process.platform] || process.platform;
}

function runnerArch(env: NodeJS.ProcessEnv): string {
  return env.RUNNER_ARCH || RUNNER_ARCH_NAMES[process.arch] || process.arch;
}

/** Why the cache service would refuse `key`, or undefined when it would take it. */
export function cacheKeyProblem(key: string): string | undefined {
  if (!key) return 'is empty';
  if (key.includes(',')) return 'contains a comma, which the cache service refuses';
  if (key.length > MAX_CACHE_KEY_LENGTH) {
    return `is ${key.length} characters, over the ${MAX_CACHE_KEY_LENGTH} characters the cache service allows`;
  }
  return undefined;
}

/**
 * Why an entry the cache service matched is not one the caller asked for, or undefined when it is: the service
 * matches the key exactly, else the newest entry whose key starts with the key or one of the restore keys.
 * Anything else is not trusted, nor is a key with control characters: no caller builds one, and a line break in
 * it would reach the log through the library.
 */
export function matchedKeyProblem(
  matched: string,
  key: string,
  restoreKeys: readonly string[],
): string | undefined {
  if (!matched) return 'no key';
  const shown = JSON.stringify(matched.length > 80 ? `${matched.slice(0, 80)}…` : matched);
  if (/[\p{C}]/u.test(matched)) return `the key ${shown}, which holds control characters`;
  if (cacheKeyProblem(matched)) return `the key ${shown}, which the cache service refuses`;
  if (![key, ...restoreKeys].some((prefix) => matched.startsWith(prefix))) {
    return `the key ${shown}, which is neither the key nor a prefix match of a restore key`;
  }
  return undefined;
}

export function validateCacheKey(key: string): void {
  const problem = cacheKeyProblem(key);
  if (problem) throw new Error(`cache key "${key.slice(0, 40)}${key.length > 40 ? '...' : ''}" ${problem}`);
}

/** sha256 of the inputs in key order, so the same inputs always give the same key whatever their order. */
export function hashInputs(inputs: Record<string, string>): string {
  const sorted = Object.keys(inputs)
    .sort()
    .map((k) => [k, inputs[k]]);
  return createHash('sha256').update(JSON.stringify(sorted)).digest('hex').slice(0, 12);
}

/**
 * The key prefix shared by every entry of this kind on this OS/arch: `${prefix}-${os}-${arch}-`. Use it as a
 * restore key so a later run with changed inputs still starts from the newest older entry.
 */
export function cacheKeyPrefix(parts: CacheKeyParts, env: NodeJS.ProcessEnv = process.env): string {
  return `${parts.prefix}-${parts.os ?? runnerOs(env)}-${parts.arch ?? runnerArch(env)}-`;
}

/** `${prefix}-${os}-${arch}-${hash of inputs}[-${suffix}]`; the hash is left out when there are no inputs. */
export function buildCacheKey(parts: CacheKeyParts, env: NodeJS.ProcessEnv = process.env): string {
  let key = `${parts.prefix}-${parts.os ?? runnerOs(env)}-${parts.arch ?? runnerArch(env)}`;
  if (parts.inputs && Object.keys(parts.inputs).length > 0) key += `-${hashInputs(parts.inputs)}`;
  if (parts.suffix) key += `-${parts.suffix}`;
  validateCacheKey(key);
  return key;
}

/**
 * An input every cache key of the action starts with. `longestKey` builds the longest key the action will make
 * from it, so a prefix that leaves no room for what the action appends is refused here.
 */
export function readCacheKeyInput(
  src: InputSource,
  name: string,
  fallback: string,
  longestKey: (value: string) => string,
): string {
  const value = readString(src, name, fallback);
  if (value.includes(',')) {
    throw new InputError(name, 'must not contain a comma (the cache service refuses keys with commas).');
  }
  const key = longestKey(value);
  if (key.length > MAX_CACHE_KEY_LENGTH) {
    throw new InputError(
      name,
      `is too long: cache keys made from it are up to ${key.length} characters, over the ` +
        `${MAX_CACHE_KEY_LENGTH} characters the cache service allows; shorten it.`,
    );
  }
  return value;
}
