/**
 * Resolving and pulling a machine disk from a registry: GET the index (a few KB), GET the chosen disk manifest,
 * then stream its one layer to disk with the core OCI client, which verifies the sha256 and deletes the file on
 * a mismatch.
 */
import { RegistryClient, TransientError } from '../../core/oci/client.js';
import { isRetryableStatus } from '../../core/oci/retry.js';
import { isIndexMediaType, MediaType, type Descriptor } from '../../core/oci/media-types.js';
import { formatReference, type ImageReference } from '../../core/oci/reference.js';
import { externalText } from '../../core/oci/response.js';
import type { Host } from '../../core/host.js';
import { diskLayer, selectDiskChild, type ImageIndex, type ImageManifest } from './machine-os.js';
import type { MachineArch, VmType } from './podman-host.js';
import { ProgressLog } from './progress.js';

/**
 * The longest silence: no answer, or no byte of the disk, for this long (a slow but moving link is fine; a
 * trickle under the low-speed limit over this long counts as silence).
 */
const REGISTRY_TIMEOUT_MS = 60_000;
/** Fewer than the client's default: an unreachable registry falls back to the cache after a few seconds. */
const REGISTRY_RETRIES = 3;

export interface ResolvedDisk {
  repository: string;
  indexDigest: string;
  /** The disk child's manifest digest: podman's cache file is named after it. */
  manifestDigest: string;
  layer: Descriptor;
  title: string;
}

/** Loopback registries speak plain HTTP, as podman and docker treat them by default. */
export function isLoopbackRegistry(registry: string): boolean {
  const host = registry.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

function registryClientFor(reference: ImageReference): RegistryClient {
  return new RegistryClient({
    registry: reference.registry,
    insecure: isLoopbackRegistry(reference.registry),
    timeoutMs: REGISTRY_TIMEOUT_MS,
    retries: REGISTRY_RETRIES,
  });
}

export async function resolveDisk(
  reference: ImageReference,
  arch: MachineArch,
  vmType: VmType,
): Promise<ResolvedDisk> {
  const client = registryClientFor(reference);
  const { repository } = reference;
  const ref = reference.digest ?? reference.tag ?? 'latest';
  try {
    const index = await client.getManifest(repository, ref, [MediaType.ociIndex, MediaType.dockerList]);
    if (!isIndexMediaType(index.mediaType)) {
      throw new Error(
        `docker://${formatReference(reference)} is a ${index.mediaType}, not an image index of machine disks.`,
      );
    }
    const child = selectDiskChild(
      JSON.parse(Buffer.from(index.bytes).toString('utf8')) as ImageIndex,
      arch,
      vmType,
    );
    const manifest = await client.getManifest(repository, child.digest, [MediaType.ociManifest]);
    const { layer, title } = diskLayer(
      JSON.parse(Buffer.from(manifest.bytes).toString('utf8')) as ImageManifest,
    );
    return { repository, indexDigest: index.digest, manifestDigest: child.digest, layer, title };
  } finally {
    await client.close();
  }
}

export async function downloadDisk(
  host: Host,
  reference: ImageReference,
  disk: ResolvedDisk,
  dest: string,
): Promise<number> {
  const client = registryClientFor(reference);
  const progress = new ProgressLog(host, `Downloading ${externalText(disk.title)}`, disk.layer.size);
  try {
    // The descriptor's size bounds the download and is checked against the free space before it starts;
    // a cut connection resumes where the file stands, so progress never passes 100 %.
    const { size } = await client.downloadBlob(disk.repository, disk.layer.digest, dest, {
      size: disk.layer.size,
      onProgress: (written) => progress.update(written),
    });
    progress.done(size);
    return size;
  } finally {
    await client.close();
  }
}

/**
 * The registry could not be reached (refused, DNS, timeout) or answered only trouble of its own (5xx, 429, 408)
 * through every retry, as an outage page in front of a registry does, as opposed to an answer such as 404 or
 * 401: only then is a cached image of the same source a fair substitute. (The stream is judged the same way.)
 */
export function isUnreachable(error: unknown): boolean {
  return error instanceof TransientError && (error.status === undefined || isRetryableStatus(error.status));
}
