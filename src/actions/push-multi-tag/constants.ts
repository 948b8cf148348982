export const Output = {
  digest: 'digest',
  pushedRefs: 'pushed-refs',
  bytesUploaded: 'bytes-uploaded',
  blobsUploaded: 'blobs-uploaded',
  blobsMounted: 'blobs-mounted',
  blobsSkipped: 'blobs-skipped',
  durationMs: 'duration-ms',
} as const;

/** How long exporting a local image (skopeo/podman) may take. */
export const EXPORT_TIMEOUT_MS = 30 * 60_000;
/** Per-request timeout for registry calls; blob transfers get more in proportion to their size. */
export const REQUEST_TIMEOUT_MS = 60_000;
