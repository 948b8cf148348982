/**
 * The side-effect half of a prune, in the order that keeps the repository valid after a crash at any point:
 * state file (who became unreferenced when) -> images.json -> index.json -> deletions -> final state -> empty
 * directories. Metadata never references a deleted file, and a file's grace period never restarts from zero
 * because a crash lost its "unreferenced since" time.
 */
import { rmdirSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../../core/atomic.js';
import { fileOf, serializeJson, type Catalog } from './catalog.js';
import type { FileAction, Plan } from './plan.js';
import { sameState, writeState, type UnreferencedSince } from './state-file.js';

export interface ApplyResult {
  imagesWritten: boolean;
  indexWritten: boolean;
  deleted: FileAction[];
  dirsRemoved: string[];
}

export async function applyPlan(
  root: string,
  catalog: Catalog,
  plan: Plan,
  stateOnDisk: UnreferencedSince,
): Promise<ApplyResult> {
  let onDisk = stateOnDisk;
  if (!sameState(onDisk, plan.stateDuring)) {
    await writeState(root, plan.stateDuring);
    onDisk = plan.stateDuring;
  }
  if (plan.images) {
    const doc = catalog.images;
    await writeFileAtomic(join(root, fileOf(doc)), serializeJson(plan.images, doc.style), doc.mode);
  }
  if (plan.index) {
    const doc = catalog.index;
    await writeFileAtomic(join(root, fileOf(doc)), serializeJson(plan.index, doc.style), doc.mode);
  }
  // Synchronous for the reason scan.ts's walk gives: 10k unlinks measured 2.5x faster than via the promise API.
  const deleted: FileAction[] = [];
  for (const file of plan.delete) {
    try {
      unlinkSync(join(root, file.path));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
    deleted.push(file);
  }
  if (!sameState(onDisk, plan.stateAfter)) {
    await writeState(root, plan.stateAfter);
  }
  const dirsRemoved: string[] = [];
  for (const dir of plan.dirsToRemove) {
    try {
      rmdirSync(join(root, dir));
      dirsRemoved.push(dir);
    } catch (error) {
      // A publisher that does not take the lock may have put a file there meanwhile: then the dir stays.
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST' && code !== 'ENOENT') throw error;
    }
  }
  return {
    imagesWritten: plan.images !== undefined,
    indexWritten: plan.index !== undefined,
    deleted,
    dirsRemoved,
  };
}
