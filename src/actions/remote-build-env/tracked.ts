/**
 * Children that outlive main (the podman service, the ssh tunnel) and that post must find and stop however main
 * ended, including a kill between spawning a child and saving its pid, which no state write can cover.
 *
 * So each child names itself. Main records a registry directory in state before the first spawn and starts the
 * command through a one-line shell wrapper that writes "<pid> <start time>" into `<registry>/<name>` and then
 * execs the command (same pid; the detached spawn made it lead its own process group). Post renames the registry
 * before it reads it: a wrapper that has not written its file yet then cannot (the directory is gone) and exits
 * without running the command, and one that has written it is found in the renamed directory. Nothing can run
 * that post does not see.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { readdir, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { childEnv } from '../../core/exec.js';
import { sleep } from '../../core/process.js';
import { ActionError } from '../../core/run.js';
import { identify, type ProcessIdentity } from './process-group.js';

/**
 * $0 is the registry file, "$@" the command. Field 22 of /proc/<pid>/stat is the start time (the wrapper's name,
 * field 2, is "(sh)": no spaces to shift the fields); without /proc (macOS) only the pid is written. Exit 125
 * (and nothing run) when the file cannot be written.
 */
const WRAPPER =
  'read -r s 2>/dev/null </proc/$$/stat; w() { echo "$$ ${22-}"; }; w $s >"$0" || exit 125; exec "$@"';

/** How long post waits for a wrapper that created its file but has not written it yet (microseconds, normally). */
const ENTRY_WRITE_WAIT_MS = 2000;

export interface TrackedChild {
  identity: ProcessIdentity;
  /** Resolves with the exit code if the child exits while this process still watches it. */
  exited: Promise<number>;
}

export interface TrackedSpawnOptions {
  env: NodeJS.ProcessEnv;
  /** stdout and stderr go here: a pipe back to main would break when main's process ends. */
  logFile: string;
}

export async function spawnTracked(
  registry: string,
  name: string,
  command: string,
  args: readonly string[],
  options: TrackedSpawnOptions,
): Promise<TrackedChild> {
  const log = openSync(options.logFile, 'a', 0o600);
  let child;
  try {
    child = spawn('/bin/sh', ['-c', WRAPPER, join(registry, name), command, ...args], {
      detached: true,
      stdio: ['ignore', log, log],
      // A process that lives for the rest of the job must not carry the inputs (the ssh key) or any secret.
      env: childEnv(options.env),
    });
  } finally {
    closeSync(log); // the child holds its own copy of the descriptor
  }
  const spawned = new Promise<number>((resolve, reject) => {
    child.once('spawn', () => resolve(child.pid!));
    child.once('error', (e) => reject(new ActionError(`cannot start ${command}: ${e.message}`)));
  });
  const exited = new Promise<number>((resolve) =>
    child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1))),
  );
  const pid = await spawned;
  child.unref();
  return { identity: await identify(pid), exited };
}

/** "<pid> <start time>\n" as the wrapper writes it; anything else (or pid 0/1) is not an entry. */
export function parseRegistryEntry(text: string): ProcessIdentity | undefined {
  const m = /^(\d+) (\d*)\n$/.exec(text);
  if (!m) return undefined;
  const pid = Number(m[1]);
  if (!Number.isSafeInteger(pid) || pid < 2) return undefined;
  return m[2] ? { pid, startTime: m[2] } : { pid };
}

async function readEntry(path: string): Promise<ProcessIdentity | undefined> {
  const deadline = Date.now() + ENTRY_WRITE_WAIT_MS;
  for (;;) {
    const text = await readFile(path, 'utf8');
    const identity = parseRegistryEntry(text);
    if (identity || Date.now() >= deadline) return identity;
    await sleep(10);
  }
}

/**
 * Closes the registry for good (no wrapper can start its command afterwards) and returns who registered, by
 * name. Repeatable: a second call reads the already closed registry again.
 */
export async function closeRegistry(registry: string): Promise<Map<string, ProcessIdentity>> {
  const closed = `${registry}.closed`;
  try {
    await rename(registry, closed);
  } catch (error) {
    // Never made (main died before) or closed by an earlier post run.
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  let names: string[];
  try {
    names = await readdir(closed);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return new Map();
    throw error;
  }
  const found = new Map<string, ProcessIdentity>();
  for (const name of names.sort()) {
    const identity = await readEntry(join(closed, name));
    if (identity) found.set(name, identity);
  }
  return found;
}
