/**
 * cosign's `.sig` and `.att` tags gather entries: every `cosign sign` / `cosign attest` adds a layer (a payload
 * with its signature in the annotations) to the manifest under the tag. A destination may hold entries the
 * source lacks (a production key signing after promotion), so a promotion merges into what is there, as
 * containers/image does for sigstore attachments: the destination's layers first, then the source's it lacks
 * (same media type, digest, size and annotations), and the config's `rootfs.diff_ids` extended to match.
 * `.sbom` holds one document and is replaced, as cosign replaces it.
 */
import { digestOf } from '../../core/oci/digest.js';
import type { Descriptor } from '../../core/oci/media-types.js';
import type { PushManifest } from './content.js';

export function gathersEntries(tag: string): boolean {
  return /\.(sig|att)$/.test(tag);
}

interface LayeredManifest {
  config: Descriptor;
  layers: Descriptor[];
  [key: string]: unknown;
}

function layered(bytes: Buffer): LayeredManifest | undefined {
  try {
    const parsed = JSON.parse(bytes.toString('utf8')) as Partial<LayeredManifest>;
    if (typeof parsed.config?.digest === 'string' && Array.isArray(parsed.layers)) {
      return parsed as LayeredManifest;
    }
  } catch {
    // not a manifest we can merge into
  }
  return undefined;
}

function sameEntry(a: Descriptor, b: Descriptor): boolean {
  const annotations = (d: Descriptor) => JSON.stringify(Object.entries(d.annotations ?? {}).sort());
  return (
    a.mediaType === b.mediaType &&
    a.digest === b.digest &&
    a.size === b.size &&
    annotations(a) === annotations(b)
  );
}

export type CosignMerge =
  /** The destination holds every entry of the source already: the tag stays. */
  | { kind: 'present' }
  /** A new manifest (and its config) to store by digest and tag. */
  | { kind: 'merged'; manifest: PushManifest; config: { digest: string; bytes: Buffer } };

/** Whether `destination` (a manifest's bytes) holds every entry of `source` already. */
export function holdsEntries(destination: Buffer, source: PushManifest): boolean {
  const there = layered(destination);
  const ours = layered(source.bytes);
  return !!there && !!ours && ours.layers.every((l) => there.layers.some((t) => sameEntry(t, l)));
}

/** The config a merge needs from the destination (the caller downloads it); undefined: nothing to merge into. */
export function configOf(manifest: Buffer): Descriptor | undefined {
  return layered(manifest)?.config;
}

/** Merges `source` into the destination's manifest; undefined when either is not a manifest with layers. */
export function mergeCosign(
  destination: { bytes: Buffer; mediaType: string },
  destinationConfig: Buffer,
  source: PushManifest,
): CosignMerge | undefined {
  const there = layered(destination.bytes);
  const ours = layered(source.bytes);
  if (!there || !ours) return undefined;
  const missing = ours.layers.filter((l) => !there.layers.some((t) => sameEntry(t, l)));
  if (missing.length === 0) return { kind: 'present' };
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(destinationConfig.toString('utf8')) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  const rootfs = config.rootfs as { diff_ids?: unknown } | undefined;
  if (rootfs && Array.isArray(rootfs.diff_ids)) {
    config.rootfs = {
      ...rootfs,
      diff_ids: [...(rootfs.diff_ids as unknown[]), ...missing.map((l) => l.digest)],
    };
  }
  const configBytes = Buffer.from(JSON.stringify(config));
  const configDigest = digestOf(configBytes);
  const bytes = Buffer.from(
    JSON.stringify({
      ...there,
      config: { ...there.config, digest: configDigest, size: configBytes.length },
      layers: [...there.layers, ...missing],
    }),
  );
  return {
    kind: 'merged',
    manifest: { digest: digestOf(bytes), mediaType: destination.mediaType, bytes, isIndex: false },
    config: { digest: configDigest, bytes: configBytes },
  };
}
