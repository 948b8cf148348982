/**
 * What @actions/cache 6 sends to the cache service besides the key, computed the way the library computes it
 * (lib/internal/cacheUtils.js, config.js), so an entry the library saved is found by our own lookup. The
 * service matches entries only within one version: a single differing byte here is a permanent miss.
 */
import { createHash } from 'node:crypto';
import { exec, failedForLackOfResources } from './exec.js';

/** The library's CompressionMethod values that can occur with @actions/cache 6 (it never picks `zstd`). */
export type CompressionMethod = 'zstd-without-long' | 'gzip';

const VERSION_SALT = '1.0';
const PROBE_TIMEOUT_MS = 30_000;

let probed: Promise<CompressionMethod> | undefined;

/**
 * The library runs `zstd --quiet --version` and uses zstd whenever that prints anything (stdout or stderr,
 * whatever the exit code), otherwise gzip (also when zstd cannot be started). Probed once per process, like the
 * library does per call; a probe that could not start zstd for lack of descriptors or memory is not kept.
 */
export function compressionMethod(): Promise<CompressionMethod> {
  probed ??= exec('zstd', ['--quiet', '--version'], { timeoutMs: PROBE_TIMEOUT_MS, allowFailure: true }).then(
    (r) => ((r.stdout + r.stderr).trim() ? 'zstd-without-long' : 'gzip'),
    (error: unknown) => {
      if (failedForLackOfResources(error)) probed = undefined;
      return 'gzip' as const;
    },
  );
  return probed;
}

/** sha256 of the path strings exactly as given, the compression method, a Windows marker, and the salt. */
export function cacheVersion(
  paths: readonly string[],
  method: CompressionMethod,
  platform: NodeJS.Platform = process.platform,
): string {
  const components = [...paths, method];
  // The library adds this unless enableCrossOsArchive, which it is never given by us.
  if (platform === 'win32') components.push('windows-only');
  components.push(VERSION_SALT);
  return createHash('sha256').update(components.join('|')).digest('hex');
}

export type CacheServiceVersion = 'v1' | 'v2';

/** config.js: GHES (any server but github.com, *.ghe.com, *.localhost) is always v1; else the runner's flag. */
export function cacheServiceVersion(env: NodeJS.ProcessEnv = process.env): CacheServiceVersion {
  const host = new URL(env.GITHUB_SERVER_URL || 'https://github.com').hostname.trimEnd().toUpperCase();
  const ghes = host !== 'GITHUB.COM' && !host.endsWith('.GHE.COM') && !host.endsWith('.LOCALHOST');
  if (ghes) return 'v1';
  return env.ACTIONS_CACHE_SERVICE_V2 ? 'v2' : 'v1';
}

/** ACTIONS_CACHE_MODE: unset or unknown is permissive, like the library. */
export function cacheReadable(env: NodeJS.ProcessEnv = process.env): boolean {
  const mode = (env.ACTIONS_CACHE_MODE || '').trim().toLowerCase();
  if (!['none', 'read', 'write', 'write-only'].includes(mode)) return true;
  return mode === 'read' || mode === 'write';
}
