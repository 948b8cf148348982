/**
 * A fake quay.io/podman/machine-os index, shaped like the real one (containers/podman pkg/machine/ocipull): plain
 * container children for amd64/arm64 without annotations, and one disk child per arch x disktype whose manifest
 * has the empty config and exactly one `application/zstd` layer titled with the original file name. The "disks"
 * are small random files (or a given file, such as a real qcow2) compressed with the real zstd, so the action's download and digest checks run on real
 * bytes. Written as an OCI layout and published with the core OCI client.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { RegistryClient, type BlobFile, type RegistryClientOptions } from '../../src/core/oci/client.js';
import {
  chmodSync,
  closeSync,
  copyFileSync,
  mkdirSync,
  openSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';

export interface FakeDisk {
  arch: 'x86_64' | 'aarch64';
  disktype: string;
  title: string;
  manifestDigest: string;
  blobDigest: string;
  blobSize: number;
  /** The compressed disk as stored in the layout (what a download must reproduce byte for byte). */
  blobPath: string;
}

export interface FakeMachineOs {
  layoutDir: string;
  /** Config and layer blobs, children manifests (in order), and the index: what a publisher uploads. */
  blobs: BlobFile[];
  childManifests: Array<{ digest: string; bytes: Buffer }>;
  indexBytes: Buffer;
  indexDigest: string;
  disks: FakeDisk[];
  containerManifestDigests: string[];
  disk(arch: string, disktype: string): FakeDisk;
}

const sha256 = (data: Uint8Array) => `sha256:${createHash('sha256').update(data).digest('hex')}`;

const EMPTY_CONFIG = Buffer.from('{}');

const CHUNK = 16 * 1024 * 1024;

function writeRandomFile(path: string, bytes: number): void {
  const fd = openSync(path, 'w');
  try {
    for (let left = bytes; left > 0; left -= CHUNK) writeSync(fd, randomBytes(Math.min(CHUNK, left)));
  } finally {
    closeSync(fd);
  }
}

function sha256File(path: string): string {
  const hash = createHash('sha256');
  const fd = openSync(path, 'r');
  const buffer = Buffer.alloc(CHUNK);
  try {
    for (let n = readSync(fd, buffer); n > 0; n = readSync(fd, buffer)) hash.update(buffer.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return `sha256:${hash.digest('hex')}`;
}

/** Default matrix: both arches, the disk types podman 5 publishes for each. */
export const DEFAULT_DISKS: ReadonlyArray<[FakeDisk['arch'], string]> = [
  ['x86_64', 'qemu'],
  ['x86_64', 'applehv'],
  ['x86_64', 'hyperv'],
  ['aarch64', 'qemu'],
  ['aarch64', 'applehv'],
];

const EXT: Record<string, string> = { qemu: 'qcow2', applehv: 'raw', hyperv: 'vhdx', wsl: 'tar' };

export function buildMachineOsLayout(
  dir: string,
  options: {
    diskBytes?: number;
    version?: string;
    disks?: ReadonlyArray<[FakeDisk['arch'], string]>;
    /** The disk layers' title annotation (default: podman's file name); a registry may serve anything here. */
    title?: (arch: string, disktype: string) => string;
    /** A file whose bytes a disk holds (before zstd), e.g. a real qcow2 podman can init from; else random bytes. */
    content?: (arch: string, disktype: string) => string | undefined;
  } = {},
): FakeMachineOs {
  const blobs = join(dir, 'blobs', 'sha256');
  mkdirSync(blobs, { recursive: true });
  writeFileSync(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  const uploads: BlobFile[] = [];
  const childManifests: Array<{ digest: string; bytes: Buffer }> = [];
  const put = (data: Uint8Array): { digest: string; size: number; path: string } => {
    const digest = sha256(data);
    const path = join(blobs, digest.slice(7));
    writeFileSync(path, data);
    return { digest, size: data.length, path };
  };
  const putBlob = (data: Uint8Array) => {
    const blob = put(data);
    if (!uploads.some((u) => u.digest === blob.digest)) uploads.push(blob);
    return blob;
  };
  const putManifest = (data: Buffer) => {
    const m = put(data);
    childManifests.push({ digest: m.digest, bytes: data });
    return m;
  };
  const putFile = (path: string): { digest: string; size: number; path: string } => {
    const digest = sha256File(path);
    const target = join(blobs, digest.slice(7));
    renameSync(path, target);
    const blob = { digest, size: statSync(target).size, path: target };
    uploads.push(blob);
    return blob;
  };
  const version = options.version ?? '5.3';
  const config = putBlob(EMPTY_CONFIG);
  const manifests: object[] = [];
  const containerManifestDigests: string[] = [];

  for (const architecture of ['amd64', 'arm64']) {
    const layer = putBlob(randomBytes(256));
    const cfg = putBlob(
      Buffer.from(
        JSON.stringify({ architecture, os: 'linux', rootfs: { type: 'layers', diff_ids: [layer.digest] } }),
      ),
    );
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: cfg.digest, size: cfg.size },
        layers: [
          { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layer.digest, size: layer.size },
        ],
      }),
    );
    const m = putManifest(manifest);
    containerManifestDigests.push(m.digest);
    manifests.push({
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      digest: m.digest,
      size: m.size,
      platform: { architecture, os: 'linux' },
    });
  }

  const disks: FakeDisk[] = [];
  for (const [arch, disktype] of options.disks ?? DEFAULT_DISKS) {
    // Through files, not buffers: the benchmark makes a 1 GiB disk.
    const raw = join(dir, `${arch}-${disktype}.raw`);
    const content = options.content?.(arch, disktype);
    if (content) copyFileSync(content, raw);
    else writeRandomFile(raw, options.diskBytes ?? 64 * 1024);
    execFileSync('zstd', ['-q', '-1', '--rm', raw, '-o', `${raw}.zst`]);
    const blob = putFile(`${raw}.zst`);
    const title =
      options.title?.(arch, disktype) ??
      `fedora-coreos-41.20261101.0-${disktype}.${arch}.${EXT[disktype]}.zst`;
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: config.digest, size: config.size },
        layers: [
          {
            mediaType: 'application/zstd',
            digest: blob.digest,
            size: blob.size,
            annotations: { 'org.opencontainers.image.title': title },
          },
        ],
      }),
    );
    const m = putManifest(manifest);
    disks.push({
      arch,
      disktype,
      title,
      manifestDigest: m.digest,
      blobDigest: blob.digest,
      blobSize: blob.size,
      blobPath: blob.path,
    });
    manifests.push({
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      digest: m.digest,
      size: m.size,
      platform: { architecture: arch, os: 'linux' },
      annotations: { disktype },
    });
  }

  const index = Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests }),
  );
  const idx = put(index);
  writeFileSync(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.index.v1+json',
          digest: idx.digest,
          size: idx.size,
          annotations: { 'org.opencontainers.image.ref.name': version },
        },
      ],
    }),
  );
  return {
    layoutDir: dir,
    blobs: uploads,
    childManifests,
    indexBytes: index,
    indexDigest: idx.digest,
    disks,
    containerManifestDigests,
    disk(a, t) {
      const found = disks.find((d) => d.arch === a && d.disktype === t);
      if (!found) throw new Error(`fake machine-os has no ${a}/${t} disk`);
      return found;
    },
  };
}

/**
 * Publishes the fake index to `<registry>/<repo>:<tag>` with the core OCI client (plain HTTP on loopback):
 * blobs, then every child manifest by digest, then the index under the tag; digests are preserved byte for byte.
 */
export async function publishMachineOs(
  fake: FakeMachineOs,
  registry: string,
  repo: string,
  tag: string,
  /** How to reach the registry, when not over plain http (a TLS registry: `{ tlsVerify: false }`). */
  reach: Partial<RegistryClientOptions> = { insecure: true },
): Promise<void> {
  const client = new RegistryClient({ registry, timeoutMs: 600_000, ...reach });
  for (const blob of fake.blobs) await client.uploadBlob(repo, blob);
  for (const m of fake.childManifests) {
    await client.putManifest(repo, m.digest, m.bytes, 'application/vnd.oci.image.manifest.v1+json');
  }
  const { digest } = await client.putManifest(
    repo,
    tag,
    fake.indexBytes,
    'application/vnd.oci.image.index.v1+json',
  );
  if (digest !== fake.indexDigest)
    throw new Error(`registry stored the index as ${digest}, not ${fake.indexDigest}`);
}

/**
 * A real but tiny machine disk for `podman machine init` tests: a 64M qcow2 whose first 64 KiB are random (so
 * `qemu-img compare` against it proves a disk podman made came from THIS image, not a download), zstd-compressed
 * the way machine-os ships its disks, readable by any user (the init runs as a non-root test user).
 */
export function writeTinyMachineImage(dir: string): { image: string; qcow2: string } {
  const raw = join(dir, 'disk.raw');
  writeRandomFile(raw, 64 * 1024);
  execFileSync('truncate', ['-s', '64M', raw]);
  const qcow2 = join(dir, 'disk.qcow2');
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2], { stdio: 'pipe' });
  rmSync(raw);
  const image = join(dir, 'machine-os.qcow2.zst');
  execFileSync('zstd', ['-q', qcow2, '-o', image]);
  chmodSync(image, 0o644);
  return { image, qcow2 };
}
