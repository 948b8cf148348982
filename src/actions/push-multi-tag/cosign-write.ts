/**
 * Writing a cosign `.sig` / `.att` tag at a destination where others sign too. Registries have no conditional
 * PUT, and a promotion reads the tag in its lookups, minutes before phase 2 writes it: a `cosign sign` there in
 * between would lose its signature to our merge of the older manifest. So the tag is read again just before the
 * PUT (a change is merged into) and after it (our entries lost to a writer that came between are merged back),
 * a few rounds. Entries are only ever added. The window left is one round trip, as cosign's own read-modify-write.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isValidDigest } from '../../core/oci/reference.js';
import type { PushManifest } from './content.js';
import { configOf, holdsEntries, mergeCosign } from './cosign-merge.js';
import type { Target } from './phases.js';
import type { Merge } from './plan.js';

const COSIGN_CONFIG_LIMIT = 1024 * 1024;
/** Read-merge-write rounds before a concurrent signer wins. */
const MAX_ROUNDS = 3;

/** The destination's cosign manifest with the source's entries added (its config read into the scratch dir). */
export async function mergeAt(
  target: Target,
  there: { bytes: Buffer; mediaType: string },
  source: PushManifest,
): Promise<Exclude<Merge, { kind: 'unread' }> | undefined> {
  const config = configOf(there.bytes);
  // cosign's config is a few hundred bytes; anything far larger is not one of its manifests.
  if (!config || !isValidDigest(config.digest) || !(config.size <= COSIGN_CONFIG_LIMIT)) return undefined;
  const dir = join(target.scratch, 'cosign', target.registry.replace(/[^\w.-]/g, '_'), target.repository);
  await mkdir(dir, { recursive: true });
  const path = join(dir, config.digest.replace(':', '-'));
  await target.client.downloadBlob(target.repository, config.digest, path, { size: config.size });
  const merge = mergeCosign(there, await readFile(path), source);
  if (merge?.kind !== 'merged') return merge && { kind: 'present' };
  const configPath = join(dir, merge.config.digest.replace(':', '-'));
  await writeFile(configPath, merge.config.bytes);
  return {
    kind: 'merged',
    manifest: merge.manifest,
    config: { digest: merge.config.digest, size: merge.config.bytes.length, path: configPath },
  };
}

/**
 * Makes `tag` hold every entry of `source`, starting from `planned` (the manifest phase 1 stored, made from the
 * tag's manifest `base` as the lookups read it, or the source's own where the tag was empty). Returns the
 * digest the tag holds in the end.
 */
export async function putGathering(
  target: Target,
  tag: string,
  source: PushManifest,
  planned: PushManifest,
  base: string | undefined,
): Promise<string> {
  const { client, repository } = target;
  let manifest = planned;
  for (let round = 1; round <= MAX_ROUNDS; round++) {
    const now = await client.findManifest(repository, tag);
    if (now?.digest !== base) {
      // Changed since it was read: whatever is there now is what ours goes into.
      if (now && holdsEntries(now.bytes, source)) return now.digest;
      if (now) {
        const merge = await mergeAt(target, now, source);
        if (!merge)
          throw new Error(`${repository}:${tag} now holds a manifest cosign entries cannot be merged into.`);
        if (merge.kind === 'present') return now.digest;
        await client.uploadBlob(repository, merge.config);
        manifest = merge.manifest;
      } else {
        manifest = source;
      }
      base = now?.digest;
    }
    await client.putManifest(repository, tag, manifest.bytes, manifest.mediaType);
    const after = await client.findManifest(repository, tag);
    if (after && (after.digest === manifest.digest || holdsEntries(after.bytes, source))) return after.digest;
    // Replaced after our write by a manifest without our entries: the next round merges them into it.
    base = undefined;
  }
  throw new Error(
    `${repository}:${tag} kept changing under concurrent signers; the source's entries are not in it.`,
  );
}
