/** The names action.yml gives inputs and outputs, and the state key. */
export const Inputs = {
  source: 'source',
  repositories: 'repositories',
  tags: 'tags',
  username: 'username',
  password: 'password',
  authFile: 'auth-file',
  tlsVerify: 'tls-verify',
  insecureRegistries: 'insecure-registries',
  concurrency: 'concurrency',
  chunkSize: 'chunk-size',
  compression: 'compression',
  digestFile: 'digest-file',
  atomic: 'atomic',
  referrers: 'referrers',
  dryRun: 'dry-run',
} as const;

export const Outputs = {
  digest: 'digest',
  pushedRefs: 'pushed-refs',
  failedRefs: 'failed-refs',
  plan: 'plan',
  bytesUploaded: 'bytes-uploaded',
  blobsUploaded: 'blobs-uploaded',
  blobsMounted: 'blobs-mounted',
  blobsSkipped: 'blobs-skipped',
  durationMs: 'duration-ms',
} as const;

export const State = {
  /** The whole PushState (state.ts) as JSON. */
  run: 'push-multi-tag',
} as const;

/** How long exporting a local image (skopeo/podman) may take. */
export const EXPORT_TIMEOUT_MS = 30 * 60_000;
/**
 * How long a lookup in local storage (which image a name is, whether it is a manifest list) may wait: as long as
 * the export, which waits for the same storage lock. On a shared runner another job's podman or buildah can hold
 * it for minutes (a big pull, a commit); a hung one holds it for good.
 */
export const LOOKUP_TIMEOUT_MS = EXPORT_TIMEOUT_MS;
/** After this long a lookup that still waits says so, and why it most likely waits. */
export const LOOKUP_NOTICE_MS = 60_000;
/**
 * The longest silence on a registry call: no answer, or no progress on a body (a moving transfer runs on). What
 * sends the registry content to store (a blob's PATCH or closing PUT, a manifest PUT) waits longer for its
 * answer: the transport's commitAnswerMs, from this.
 */
export const REQUEST_TIMEOUT_MS = 60_000;
