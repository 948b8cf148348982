/**
 * Image sources a push can start from, and how each becomes an OCI layout on disk, once: `oci:` is read in
 * place, `oci-archive:` is unpacked, and containers-storage / docker-archive / docker:// are exported with
 * skopeo (containers-storage through `podman save` when CONTAINER_HOST points at a remote podman service).
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { exec } from '../exec.js';
import { readOciLayout, type LocalImage } from './layout.js';
import { parseReference } from './reference.js';

export type SourceTransport = 'containers-storage' | 'oci' | 'oci-archive' | 'docker-archive' | 'docker';

export interface ImageSourceSpec {
  transport: SourceTransport;
  /** A path (oci, archives), an image name (containers-storage) or a reference (docker). */
  location: string;
  /** The image inside a layout or archive (`oci:<dir>:<ref>`). */
  ref?: string;
}

export type Compression = 'gzip' | 'zstd';

export interface OpenSourceOptions {
  /** A private directory for exports; the caller removes it. */
  scratch: string;
  env?: NodeJS.ProcessEnv;
  /**
   * Compress uncompressed layers: always while exporting containers-storage / docker-archive (gzip unless
   * given), and for layouts and oci-archives only when given and the image has uncompressed layers.
   */
  compression?: Compression;
  /** Credentials file for a docker:// source. */
  authFile?: string;
  /** false: reach a docker:// source over plain http / unverified TLS. */
  tlsVerify: boolean;
  timeoutMs: number;
  log: (line: string) => void;
}

const UNCOMPRESSED_LAYERS = new Set([
  'application/vnd.oci.image.layer.v1.tar',
  'application/vnd.docker.image.rootfs.diff.tar',
]);

const TRANSPORTS: readonly SourceTransport[] = [
  'containers-storage',
  'oci',
  'oci-archive',
  'docker-archive',
  'docker',
];

/** `path[:ref]` where a ref never contains a slash (so a path with a colon inside a directory name survives). */
function splitPathRef(text: string): { location: string; ref?: string } {
  const colon = text.lastIndexOf(':');
  if (colon > 0 && !text.slice(colon + 1).includes('/')) {
    return { location: text.slice(0, colon), ref: text.slice(colon + 1) || undefined };
  }
  return { location: text };
}

export function parseImageSource(text: string): ImageSourceSpec {
  const trimmed = text.trim();
  const m = /^([a-z][a-z0-9-]*):(.*)$/s.exec(trimmed);
  const transport =
    m && (TRANSPORTS as readonly string[]).includes(m[1]!) ? (m[1] as SourceTransport) : undefined;
  if (!transport) {
    // A bare name is a containers-storage image; `word:/path` or `word://x` is a transport we do not know.
    if (m && (m[2]!.startsWith('/') || m[2]!.startsWith('.'))) {
      throw new Error(
        `unknown transport '${m[1]}:'; use one of ${TRANSPORTS.map((t) => `${t}:`).join(', ')}.`,
      );
    }
    parseReference(trimmed);
    return { transport: 'containers-storage', location: trimmed };
  }
  const rest = m![2]!;
  if (!rest) throw new Error(`'${trimmed}' names no image after '${transport}:'.`);
  switch (transport) {
    case 'docker':
      if (!rest.startsWith('//')) throw new Error(`'${trimmed}': write docker://<reference>.`);
      parseReference(rest.slice(2));
      return { transport, location: rest.slice(2) };
    case 'containers-storage':
      return { transport, location: rest };
    default: {
      const { location, ref } = splitPathRef(rest);
      return ref === undefined ? { transport, location } : { transport, location, ref };
    }
  }
}

export function formatImageSource(spec: ImageSourceSpec): string {
  if (spec.transport === 'docker') return `docker://${spec.location}`;
  return `${spec.transport}:${spec.location}${spec.ref !== undefined ? `:${spec.ref}` : ''}`;
}

/** Turns a source into a local OCI layout (exporting it once when needed) and reads the image from it. */
export async function openImageSource(
  spec: ImageSourceSpec,
  options: OpenSourceOptions,
): Promise<LocalImage> {
  const env = options.env ?? process.env;
  const run = (cmd: string, args: string[]) =>
    exec(cmd, args, { timeoutMs: options.timeoutMs, env, onLine: (line) => options.log(line) });
  const layout = join(options.scratch, 'layout');
  if (spec.transport === 'oci' || spec.transport === 'oci-archive') {
    let dir = spec.location;
    if (spec.transport === 'oci-archive') {
      await mkdir(layout, { recursive: true });
      options.log(`Unpacking ${spec.location}`);
      await run('tar', ['-xf', spec.location, '-C', layout]);
      dir = layout;
    }
    const image = await readOciLayout(dir, spec.ref);
    if (!options.compression || !image.blobs.some((b) => UNCOMPRESSED_LAYERS.has(b.mediaType))) return image;
    const compressed = join(options.scratch, 'compressed');
    options.log(
      `Compressing the uncompressed layers of ${formatImageSource(spec)} with ${options.compression}`,
    );
    await run('skopeo', [
      'copy',
      '--quiet',
      '--all',
      '--dest-compress',
      '--dest-compress-format',
      options.compression,
      `oci:${dir}${spec.ref !== undefined ? `:${spec.ref}` : ''}`,
      `oci:${compressed}:image`,
    ]);
    return readOciLayout(compressed, 'image');
  }

  await mkdir(layout, { recursive: true });

  let from = formatImageSource(spec);
  const copyArgs = ['copy', '--quiet'];
  if (spec.transport === 'docker') {
    copyArgs.push('--all');
    if (!options.tlsVerify) copyArgs.push('--src-tls-verify=false');
    if (options.authFile) copyArgs.push('--src-authfile', options.authFile);
  }
  const uncompressed = spec.transport === 'containers-storage' || spec.transport === 'docker-archive';
  if (uncompressed) {
    copyArgs.push('--dest-compress', '--dest-compress-format', options.compression ?? 'gzip');
  }
  const remote = env.CONTAINER_HOST;
  if (spec.transport === 'containers-storage' && remote) {
    // skopeo reads only local storage; a remote service hands the image over as an archive instead.
    const archive = join(options.scratch, 'saved.tar');
    options.log(`Saving ${spec.location} from the podman service at ${remote}`);
    await run('podman', ['--url', remote, 'save', '--format', 'oci-archive', '-o', archive, spec.location]);
    from = `oci-archive:${archive}`;
  }
  options.log(`Exporting ${from} to an OCI layout`);
  await run('skopeo', [...copyArgs, from, `oci:${layout}:image`]);
  return readOciLayout(layout, 'image');
}
