/**
 * One prune run: lock -> load and validate -> scan -> plan -> apply -> verify -> report. A dry run takes no lock
 * and writes nothing inside the repository (not even the lock or state file).
 */
import { lstat, realpath, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { acquireLock, LockTimeoutError, type Lock } from '../../core/atomic.js';
import type { Host } from '../../core/host.js';
import { InputError } from '../../core/inputs.js';
import { ActionError, errorMessage } from '../../core/run.js';
import { formatDuration } from '../../core/summary.js';
import { applyPlan, type ApplyResult } from './apply.js';
import { loadCatalog, printableLines } from './catalog.js';
import { CLOCK_TOLERANCE_MS, Inputs } from './constants.js';
import type { PruneInputs } from './inputs.js';
import { planPrune } from './plan.js';
import { LOCK_FILE_NAME } from './repo-paths.js';
import { buildReport, changedMessage, planLines, unmatchedMessage, type PruneReport } from './report.js';
import { scanRepository } from './scan.js';
import { readState } from './state-file.js';
import { verifyItems } from './verify.js';

export interface PruneEnvironment {
  now?: () => number;
}

/**
 * The repository root as a real path. A `path` that names no directory on this machine is the user's to fix; an
 * I/O error on one that does is not.
 */
async function repositoryRoot(path: string): Promise<string> {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(path)) {
    throw new InputError(
      Inputs.path,
      `'${path}' is a URL; prune works on the repository's directory on this machine (mount or sync it here first).`,
    );
  }
  let root: string;
  try {
    root = await realpath(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      throw new InputError(
        Inputs.path,
        `${path} does not exist; give the directory that holds streams/v1/ of the repository.`,
      );
    }
    throw new ActionError(`cannot open the repository ${path}: ${errorMessage(error)}`);
  }
  const info = await stat(root);
  if (!info.isDirectory()) {
    const what = info.isFile() ? 'is a file, not a directory' : 'is not a directory';
    throw new InputError(Inputs.path, `${path} ${what}; give the repository's root directory.`);
  }
  return root;
}

function contentDirsText(dirs: readonly string[]): string {
  if (dirs.length === 0) return 'no content directory';
  return dirs.length <= 3 ? dirs.join(', ') : `${dirs.length} content directories`;
}

async function takeLock(root: string, inputs: PruneInputs, host: Host): Promise<Lock> {
  const file = join(root, LOCK_FILE_NAME);
  host.info(`Taking the repository lock ${file} (waits up to ${formatDuration(inputs.lockTimeoutMs)})`);
  try {
    return await acquireLock(file, {
      timeoutMs: inputs.lockTimeoutMs,
      purpose: 'prune-simplestreams',
      warn: (message) => host.warning(message),
      // A cancelled workflow run (SIGINT, then SIGTERM) must not leave the lock for 6 h.
      releaseOnSignal: true,
    });
  } catch (error) {
    if (error instanceof LockTimeoutError) {
      // The owner's host and time are the lock file's text, written by anyone who may write in the repository.
      throw new ActionError(
        `${printableLines(error.message)} for longer than lock-timeout (${formatDuration(inputs.lockTimeoutMs)}); ` +
          'another prune or a publisher is working on this repository. Nothing was changed.',
      );
    }
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EISDIR') {
      throw new ActionError(
        `${file} is a directory, not a lock file; it is not this action's to remove: remove it if nothing ` +
          'uses it, then run again. Nothing was changed.',
      );
    }
    throw error;
  }
}

/**
 * How far this machine's clock runs ahead of the repository's file system (the file server's, over NFS; negative:
 * behind), from the mtime the file system gave the lock file just created. File ages are counted from times the
 * file system sets, so a clock ahead by an hour would make an upload of a minute ago look an hour older and cut its
 * grace period short: the plan counts by this machine's clock less that. A clock behind makes files look younger
 * (they wait longer), but the times it would record in the state file ("unreferenced since") are early by as much,
 * and the next prune, from a machine whose clock is right, would cut those grace periods short: the state records
 * the file system's time. A dry run's clock is this machine's (it takes no lock and records nothing). Less than
 * CLOCK_TOLERANCE_MS counts as none: the file system's coarser clock and the moments since the lock was created
 * always make a few milliseconds, and a grace period is minutes or hours.
 */
async function clockAheadOfFiles(lock: Lock): Promise<number> {
  const aheadMs = Date.now() - (await lstat(lock.path)).mtimeMs;
  return Math.abs(aheadMs) < CLOCK_TOLERANCE_MS ? 0 : aheadMs;
}

export async function pruneRepository(
  inputs: PruneInputs,
  host: Host,
  environment: PruneEnvironment = {},
): Promise<PruneReport> {
  const now = environment.now ?? Date.now;
  const startedMs = now();
  const root = await repositoryRoot(inputs.path);
  const lock = inputs.dryRun ? undefined : await takeLock(root, inputs, host);
  const acquiredMs = now();
  const skewMs = lock ? await clockAheadOfFiles(lock) : 0;
  if (skewMs > 0) {
    host.warning(
      `this machine's clock is ${formatDuration(skewMs)} ahead of the repository's file system; ` +
        "file ages are counted by the file system's clock",
    );
  } else if (skewMs < 0) {
    host.warning(
      `this machine's clock is ${formatDuration(-skewMs)} behind the repository's file system; ` +
        "the state file records the file system's time",
    );
  }
  let report: PruneReport;
  try {
    const { catalog, state, facts } = await host.group('Reading the repository', async () => {
      const catalog = await loadCatalog(root);
      const state = await readState(root);
      const facts = await scanRepository(root, catalog, state.keys());
      host.info(
        `${catalog.products.length} product(s), ${facts.referenced.size} referenced file(s), ` +
          `${facts.files.size} file(s) under ${contentDirsText(facts.contentRoots)}`,
      );
      return { catalog, state, facts };
    });
    const planNowMs = now();
    const plan = planPrune(catalog, facts, state, {
      ...inputs,
      nowMs: planNowMs - Math.max(skewMs, 0),
      recordNowMs: planNowMs - skewMs,
    });
    for (const u of plan.unmatchedPatterns) host.warning(unmatchedMessage(u, catalog.products.length));
    await host.group(inputs.dryRun ? 'Plan (dry run: nothing is changed)' : 'Plan', async () => {
      for (const line of planLines(plan, inputs.dryRun)) host.info(line);
    });
    let applied: ApplyResult | undefined;
    if (!inputs.dryRun) {
      applied = await host.group('Applying', () => applyPlan(root, catalog, plan, state));
      if (applied.changed.length > 0) host.warning(changedMessage(applied.changed));
    }
    const verify =
      inputs.dryRun || inputs.verify === 'none'
        ? { mode: inputs.verify, skipped: inputs.dryRun ? 'dry run' : 'verify: none' }
        : await host.group(`Verifying (${inputs.verify})`, () =>
            verifyItems(root, plan.verifyItems, inputs.verify),
          );
    const finishedMs = now();
    report = buildReport({
      repository: root,
      inputs,
      startedMs,
      finishedMs,
      plan,
      applied,
      verify,
      lock: lock ? { file: lock.path, acquiredMs, releasedMs: finishedMs } : undefined,
    });
  } finally {
    await lock?.release();
  }
  return report;
}
