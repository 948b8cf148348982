/** Checks that what images.json still references after the prune is there, as `incus-simplestreams verify` would. */
import { createHash } from 'node:crypto';
import type { Stats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { realpath } from 'node:fs/promises';
import { join } from 'node:path';
import { handleChunks, openRegularFileWithin, OUTSIDE_DIRECTORY } from '../../core/files.js';
import { errorMessage } from '../../core/run.js';
import type { CatalogItem } from './catalog.js';
import type { VerifyMode } from './inputs.js';
import { mapLimit } from '../../core/pool.js';

export interface VerifyResult {
  mode: VerifyMode;
  checkedFiles: number;
  problems: string[];
}

/**
 * A referenced path may be a link to a file elsewhere in the repository (a pool), never to one outside it: a
 * file swapped for a link to /etc/shadow after the scan would have its size and sha256 printed in the report.
 */
async function checkItem(root: string, item: CatalogItem, mode: VerifyMode): Promise<string | undefined> {
  const abs = join(root, item.path);
  let file: FileHandle;
  try {
    file = await openRegularFileWithin(root, abs);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === OUTSIDE_DIRECTORY) return `${item.path} leads out of the repository (a link swapped in?)`;
    return code === 'ENOENT' || code === 'ENOTDIR'
      ? `missing ${item.path}`
      : `${item.path} cannot be read: ${errorMessage(error)}`;
  }
  let info: Stats;
  try {
    info = await file.stat();
  } catch (error) {
    await file.close();
    return `${item.path} cannot be read: ${errorMessage(error)}`;
  }
  // A directory opens (only reading it fails), and its size could be the listed one: in size mode nothing reads.
  if (info.isDirectory()) {
    await file.close();
    return `${item.path} is a directory`;
  }
  const { size } = info;
  if ((item.size !== undefined && size !== item.size) || mode !== 'sha256' || item.sha256 === undefined) {
    await file.close();
    return item.size !== undefined && size !== item.size
      ? `${item.path} has ${size} bytes, expected ${item.size}`
      : undefined;
  }
  const hash = createHash('sha256');
  try {
    for await (const chunk of handleChunks(file, abs)) hash.update(chunk);
  } catch (error) {
    // A kept file verify cannot read is one more problem to list, like a missing one: not the end of the
    // report (the prune is done by now, and the other files still need checking).
    return `${item.path} cannot be read: ${errorMessage(error)}`;
  }
  const actual = hash.digest('hex');
  return actual === item.sha256.toLowerCase()
    ? undefined
    : `${item.path} has sha256 ${actual}, expected ${item.sha256}`;
}

export async function verifyItems(
  root: string,
  items: readonly CatalogItem[],
  mode: VerifyMode,
): Promise<VerifyResult> {
  if (mode === 'none') return { mode, checkedFiles: 0, problems: [] };
  const byPath = new Map(items.map((i) => [`${i.path}\0${i.size ?? ''}\0${i.sha256 ?? ''}`, i]));
  const realRoot = await realpath(root);
  // Hashing reads whole files: a few at a time keeps the disk streaming instead of seeking.
  const results = await mapLimit([...byPath.values()], mode === 'sha256' ? 4 : 64, (i) =>
    checkItem(realRoot, i, mode),
  );
  return {
    mode,
    checkedFiles: new Set(items.map((i) => i.path)).size,
    problems: results.filter((p): p is string => p !== undefined),
  };
}
