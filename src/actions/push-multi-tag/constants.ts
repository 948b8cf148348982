export const Output = {
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

/** How long exporting a local image (skopeo/podman) may take. */
export const EXPORT_TIMEOUT_MS = 30 * 60_000;
/** The longest silence on a registry call: no answer, or no progress on a body (a moving transfer runs on). */
export const REQUEST_TIMEOUT_MS = 60_000;
