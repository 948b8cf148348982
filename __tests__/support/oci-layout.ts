/**
 * Generates OCI image layouts with random (incompressible) layers of chosen sizes, single-arch or as a
 * multi-arch index. Layers are real gzip'd tars with matching diff_ids, so skopeo and podman accept them.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

export interface Platform {
  os: string;
  architecture: string;
}

export interface LayoutOptions {
  /** Payload size of each layer in bytes (the gzip'd blob is a little larger: random data does not shrink). */
  layers: number[];
  /** Several platforms make an image index whose children each get their own layers. */
  platforms?: Platform[];
  /** The `org.opencontainers.image.ref.name` in index.json. */
  ref?: string;
  /** false writes plain tar layers (`...layer.v1.tar`), as an uncompressed export would. Default true. */
  compress?: boolean;
}

export interface BlobInfo {
  digest: string;
  size: number;
  mediaType: string;
}

export interface GeneratedLayout {
  dir: string;
  ref: string;
  /** `oci:<dir>:<ref>` for skopeo and for the action's `source`. */
  transportRef: string;
  /** The top manifest's digest (the index for multi-arch). */
  digest: string;
  mediaType: string;
  /** Child manifests of an index (empty for single-arch). */
  children: BlobInfo[];
  /** Configs and layers. */
  blobs: BlobInfo[];
  blobBytes: number;
}

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
const OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip';
const OCI_LAYER_PLAIN = 'application/vnd.oci.image.layer.v1.tar';

function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** A one-file ustar archive. */
function tarOf(name: string, content: Buffer): Buffer {
  const header = Buffer.alloc(512);
  header.write(name, 0, 100, 'utf8');
  header.write('0000644\0', 100);
  header.write('0000000\0', 108);
  header.write('0000000\0', 116);
  header.write(content.length.toString(8).padStart(11, '0') + '\0', 124);
  header.write(
    Math.floor(Date.UTC(2024, 0, 1) / 1000)
      .toString(8)
      .padStart(11, '0') + '\0',
    136,
  );
  header.write('        ', 148);
  header.write('0', 156);
  header.write('ustar\0', 257);
  header.write('00', 263);
  let sum = 0;
  for (const byte of header) sum += byte;
  header.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
  const padding = Buffer.alloc((512 - (content.length % 512)) % 512);
  return Buffer.concat([header, content, padding, Buffer.alloc(1024)]);
}

class BlobWriter {
  readonly written = new Map<string, BlobInfo>();
  constructor(private readonly dir: string) {
    mkdirSync(join(dir, 'blobs', 'sha256'), { recursive: true });
  }
  write(data: Buffer, mediaType: string): BlobInfo {
    const digest = sha256(data);
    writeFileSync(join(this.dir, 'blobs', 'sha256', digest.slice(7)), data);
    const info = { digest, size: data.length, mediaType };
    this.written.set(digest, info);
    return info;
  }
}

function writeImage(
  blobs: BlobWriter,
  sizes: number[],
  platform: Platform,
  compress: boolean,
): { manifest: BlobInfo; parts: BlobInfo[] } {
  const parts: BlobInfo[] = [];
  const diffIds: string[] = [];
  const layers = sizes.map((size, i) => {
    const tar = tarOf(`layer-${i}.bin`, randomBytes(size));
    diffIds.push(sha256(tar));
    const layer = compress
      ? blobs.write(gzipSync(tar, { level: 1 }), OCI_LAYER)
      : blobs.write(tar, OCI_LAYER_PLAIN);
    parts.push(layer);
    return layer;
  });
  const config = blobs.write(
    Buffer.from(
      JSON.stringify({
        created: '2024-01-01T00:00:00Z',
        architecture: platform.architecture,
        os: platform.os,
        config: { Cmd: ['/layer-0.bin'] },
        rootfs: { type: 'layers', diff_ids: diffIds },
      }),
    ),
    OCI_CONFIG,
  );
  parts.unshift(config);
  const manifest = blobs.write(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
        layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
      }),
    ),
    OCI_MANIFEST,
  );
  return { manifest, parts };
}

export function generateLayout(dir: string, options: LayoutOptions): GeneratedLayout {
  const ref = options.ref ?? 'latest';
  const blobs = new BlobWriter(dir);
  writeFileSync(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const platforms = options.platforms ?? [{ os: 'linux', architecture: 'amd64' }];
  const images = platforms.map((p) => ({
    platform: p,
    ...writeImage(blobs, options.layers, p, options.compress ?? true),
  }));
  let top: BlobInfo;
  let children: BlobInfo[] = [];
  if (platforms.length > 1) {
    children = images.map((i) => i.manifest);
    top = blobs.write(
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: OCI_INDEX,
          manifests: images.map((i) => ({
            mediaType: i.manifest.mediaType,
            digest: i.manifest.digest,
            size: i.manifest.size,
            platform: i.platform,
          })),
        }),
      ),
      OCI_INDEX,
    );
  } else {
    top = images[0]!.manifest;
  }
  writeFileSync(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [
        {
          mediaType: top.mediaType,
          digest: top.digest,
          size: top.size,
          annotations: { 'org.opencontainers.image.ref.name': ref },
        },
      ],
    }),
  );
  const parts = images.flatMap((i) => i.parts);
  return {
    dir,
    ref,
    transportRef: `oci:${dir}:${ref}`,
    digest: top.digest,
    mediaType: top.mediaType,
    children,
    blobs: parts,
    blobBytes: parts.reduce((n, b) => n + b.size, 0),
  };
}
