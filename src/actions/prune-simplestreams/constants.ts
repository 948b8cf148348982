/** The names action.yml gives inputs and outputs. No post step, so no state. */

export const Inputs = {
  path: 'path',
  keepVersions: 'keep-versions',
  maxAge: 'max-age',
  gracePeriod: 'grace-period',
  products: 'products',
  keepBroken: 'keep-broken',
  dryRun: 'dry-run',
  reportFile: 'report-file',
  verify: 'verify',
  lockTimeout: 'lock-timeout',
} as const;

export const Outputs = {
  removedVersions: 'removed-versions',
  removedFiles: 'removed-files',
  deferredFiles: 'deferred-files',
  freedBytes: 'freed-bytes',
  reportFile: 'report-file',
} as const;

/**
 * Clocks closer than this count as equal: a file system's coarser clock and the moments between a file's change
 * and its reading always make a few milliseconds, and a grace period is minutes or hours.
 */
export const CLOCK_TOLERANCE_MS = 60_000;
