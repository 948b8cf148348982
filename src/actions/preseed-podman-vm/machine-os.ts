/**
 * The machine-os image index as podman reads it (containers/podman pkg/machine/ocipull): which reference podman
 * pulls by default, which child of the index holds the disk for a provider and arch, and the file name podman
 * gives that disk in its own image cache.
 */
import { MediaType, type Descriptor } from '../../core/oci/media-types.js';
import { isValidDigest } from '../../core/oci/reference.js';
import { externalText } from '../../core/oci/response.js';
import type { PodmanVersion } from '../../core/podman.js';
import { jsonObject, PODMAN4_DEFAULT_STREAM } from './fcos-stream.js';
import type { MachineArch, VmType } from './podman-host.js';

export const TITLE_ANNOTATION = 'org.opencontainers.image.title';

export interface ImageIndex {
  mediaType?: string;
  manifests: Descriptor[];
}

export interface ImageManifest {
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
}

/**
 * What `podman machine init` pulls when no image is given: podman 5 the machine-os index of its major.minor
 * (`docker://quay.io/podman/machine-os:<major.minor>`, WSL its own repository); podman 4 never reads those, it
 * takes Fedora CoreOS from the `testing` stream (see fcos-stream.ts).
 */
export function defaultImage(version: PodmanVersion, vmType: VmType): string {
  if (version.major < 5) return PODMAN4_DEFAULT_STREAM;
  const repo = vmType === 'wsl' ? 'machine-os-wsl' : 'machine-os';
  return `docker://quay.io/podman/${repo}:${version.major}.${version.minor}`;
}

/** The index's `disktype` annotation for a provider: libkrun boots the same raw disk as applehv. */
export function diskTypeFor(vmType: VmType): string {
  return vmType === 'libkrun' ? 'applehv' : vmType;
}

/** The disk format a provider boots. */
export function diskKind(vmType: VmType): string {
  switch (vmType) {
    case 'qemu':
      return 'qcow2';
    case 'applehv':
    case 'libkrun':
      return 'raw';
    case 'hyperv':
      return 'vhdx';
    case 'wsl':
      return 'tar';
  }
}

/**
 * Podman's `ImageFormat().KindWithCompression()` per provider: the suffix of its cache file. (WSL's says xz
 * although current disks are zstd; podman looks the file up by this name, so it is kept as podman spells it.)
 */
export function kindWithCompression(vmType: VmType): string {
  switch (vmType) {
    case 'qemu':
      return 'qcow2.zst';
    case 'applehv':
    case 'libkrun':
      return 'raw.zst';
    case 'hyperv':
      return 'vhdx.zst';
    case 'wsl':
      return 'tar.xz';
  }
}

/** `<hex of the disk manifest digest>.<kind>.<compression>`: podman reuses that file instead of pulling. */
export function podmanCacheFileName(diskManifestDigest: string, vmType: VmType): string {
  return `${digestHex(diskManifestDigest)}.${kindWithCompression(vmType)}`;
}

/**
 * A disk podman itself cached under its digest-derived name (`<64 hex>.<kind>.<compression>`, the compression as
 * the release's title had it). In podman 5's cache only such a file of another digest is outdated: podman deletes
 * them when it pulls a newer disk, and this action keeps that rule (image-store.ts: placeInPodmanCache).
 */
export function isPodmanCachedDisk(name: string): boolean {
  return /^[0-9a-f]{64}\.(qcow2|raw|vhdx|tar)\.(zst|xz|gz|bz2|zip)$/.test(name);
}

const SHA256_DIGEST = /^sha256:([0-9a-f]{64})$/;

/** Podman names and keys its machine images by sha256 only. */
export function isSha256Digest(digest: unknown): digest is string {
  return typeof digest === 'string' && SHA256_DIGEST.test(digest);
}

export function digestHex(digest: string): string {
  const m = SHA256_DIGEST.exec(digest);
  if (!m) throw new Error(`not a sha256 digest: ${digest}`);
  return m[1]!;
}

/**
 * An index entry that can be a disk child: a descriptor with a real digest, an OCI manifest media type (never an
 * index: a disk is one manifest), and platform/annotations that are objects. Registry JSON is hostile; anything
 * else is skipped, not dereferenced.
 */
function diskCandidate(value: unknown): Descriptor | undefined {
  const d = jsonObject(value);
  if (!d || typeof d.digest !== 'string' || !isValidDigest(d.digest)) return undefined;
  if (d.mediaType !== MediaType.ociManifest) return undefined;
  const annotations = jsonObject(d.annotations);
  if (!annotations || typeof annotations.disktype !== 'string') return undefined;
  if (!jsonObject(d.platform)) return undefined;
  return d as unknown as Descriptor;
}

/**
 * The disk child for arch + provider, matched as podman matches it: an entry with a `disktype` annotation,
 * `platform.os` linux and `platform.architecture` x86_64/aarch64. Plain container children (amd64/arm64, no
 * annotation) never match. The first match wins, as in podman.
 */
export function selectDiskChild(index: ImageIndex, arch: MachineArch, vmType: VmType): Descriptor {
  if (!Array.isArray(index.manifests))
    throw new Error('the answer is not an image index (no manifests list).');
  const disks = index.manifests.map(diskCandidate).filter((d): d is Descriptor => d !== undefined);
  const diskType = diskTypeFor(vmType);
  const match = disks.find(
    (d) =>
      d.annotations?.disktype === diskType && d.platform?.os === 'linux' && d.platform?.architecture === arch,
  );
  if (match) return match;
  const offered = disks.map((d) => `${String(d.platform?.architecture)}/${d.annotations?.disktype}`);
  throw new Error(
    `the image index has no ${arch} disk of type ${diskType}; it offers ${offered.length ? externalText(offered.join(', ')) : 'no disk images'}.`,
  );
}

/**
 * The one zstd layer of a disk manifest, and the original file name podman keeps from its title. Its size is
 * required: it bounds the download and is checked against the free space before the first byte.
 */
export function diskLayer(manifest: ImageManifest): { layer: Descriptor; title: string } {
  if (!Array.isArray(manifest.layers)) {
    throw new Error(
      `the disk child is not an image manifest (it has no layers; media type ${String(manifest.mediaType)}).`,
    );
  }
  if (manifest.layers.length !== 1) {
    throw new Error(`a machine disk manifest has exactly one layer; this one has ${manifest.layers.length}.`);
  }
  const layer = jsonObject(manifest.layers[0]);
  if (!layer || typeof layer.digest !== 'string' || !isValidDigest(layer.digest)) {
    throw new Error('the disk layer has no valid digest.');
  }
  if (!Number.isSafeInteger(layer.size) || (layer.size as number) < 0) {
    throw new Error('the disk layer declares no valid size.');
  }
  const title = jsonObject(layer.annotations)?.[TITLE_ANNOTATION];
  if (typeof title !== 'string' || !title) {
    throw new Error(`the disk layer has no ${TITLE_ANNOTATION} annotation (its file name).`);
  }
  return { layer: layer as unknown as Descriptor, title };
}
