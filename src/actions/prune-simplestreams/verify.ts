/** Checks that what images.json still references after the prune is there, as `incus-simplestreams verify` would. */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { digestFile } from '../../core/oci/digest.js';
import { errorMessage } from '../../core/run.js';
import type { CatalogItem } from './catalog.js';
import type { VerifyMode } from './inputs.js';
import { mapLimit } from '../../core/pool.js';

export interface VerifyResult {
  mode: VerifyMode;
  checkedFiles: number;
  problems: string[];
}

async function checkItem(root: string, item: CatalogItem, mode: VerifyMode): Promise<string | undefined> {
  const abs = join(root, item.path);
  let size: number;
  try {
    size = (await stat(abs)).size;
  } catch {
    return `missing ${item.path}`;
  }
  if (item.size !== undefined && size !== item.size)
    return `${item.path} has ${size} bytes, expected ${item.size}`;
  if (mode === 'sha256' && item.sha256 !== undefined) {
    let actual: string;
    try {
      actual = (await digestFile(abs)).slice('sha256:'.length);
    } catch (error) {
      // A kept file verify cannot read is one more problem to list, like a missing one: not the end of the
      // report (the prune is done by now, and the other files still need checking).
      return `${item.path} cannot be read: ${errorMessage(error)}`;
    }
    if (actual !== item.sha256.toLowerCase())
      return `${item.path} has sha256 ${actual}, expected ${item.sha256}`;
  }
  return undefined;
}

export async function verifyItems(
  root: string,
  items: readonly CatalogItem[],
  mode: VerifyMode,
): Promise<VerifyResult> {
  if (mode === 'none') return { mode, checkedFiles: 0, problems: [] };
  const byPath = new Map(items.map((i) => [`${i.path}\0${i.size ?? ''}\0${i.sha256 ?? ''}`, i]));
  // Hashing reads whole files: a few at a time keeps the disk streaming instead of seeking.
  const results = await mapLimit([...byPath.values()], mode === 'sha256' ? 4 : 64, (i) =>
    checkItem(root, i, mode),
  );
  return {
    mode,
    checkedFiles: new Set(items.map((i) => i.path)).size,
    problems: results.filter((p): p is string => p !== undefined),
  };
}
