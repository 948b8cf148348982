/**
 * The service outlives the main step's node process, so post knows it only by pid. A pid can be reused after the
 * service died; the start time from /proc/<pid>/stat tells "our service" from "an unrelated process that got the
 * same number", so post never signals a stranger. A zombie (exited, not yet reaped because its parent is gone
 * and this machine's pid 1 does not reap) counts as gone.
 */
import { readFile } from 'node:fs/promises';
import { processAlive, sleep } from '../../core/process.js';

export interface ProcessIdentity {
  pid: number;
  /** Field 22 of /proc/<pid>/stat (clock ticks since boot); undefined where /proc does not exist. */
  startTime?: string;
}

interface ProcStat {
  state: string;
  startTime: string;
}

/** Parses /proc/<pid>/stat; the command name is in parentheses and may itself hold spaces and ')'. */
export function parseProcStat(text: string): ProcStat | undefined {
  const close = text.lastIndexOf(')');
  if (close < 0) return undefined;
  const fields = text
    .slice(close + 2)
    .trim()
    .split(' ');
  // fields[0] is field 3 (state); field 22 (starttime) is fields[19].
  const state = fields[0];
  const startTime = fields[19];
  return state && startTime ? { state, startTime } : undefined;
}

async function readProcStat(pid: number): Promise<ProcStat | undefined> {
  try {
    return parseProcStat(await readFile(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return undefined;
  }
}

export async function identify(pid: number): Promise<ProcessIdentity> {
  const stat = await readProcStat(pid);
  return stat ? { pid, startTime: stat.startTime } : { pid };
}

/** True while the very process described by `id` runs (not a zombie, not a later process with its pid). */
export async function isRunning(id: ProcessIdentity): Promise<boolean> {
  if (!processAlive(id.pid)) return false;
  const stat = await readProcStat(id.pid);
  if (!stat) return id.startTime === undefined; // no /proc (macOS): the signal check is all there is
  if (stat.state === 'Z' || stat.state === 'X') return false;
  return id.startTime === undefined || stat.startTime === id.startTime;
}

/** Whether the process ended within `timeoutMs`. */
export async function waitGone(id: ProcessIdentity, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (!(await isRunning(id))) return true;
    if (Date.now() >= deadline) return false;
    await sleep(100);
  }
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    // The service was spawned detached, so it leads its own process group: a negative pid reaches its children.
    process.kill(-pid, signal);
  } catch {
    // already gone
  }
}

export type StopOutcome = 'not-running' | 'terminated' | 'killed' | 'survived';

function signalProcess(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

async function stop(
  id: ProcessIdentity,
  graceMs: number,
  signal: (pid: number, signal: NodeJS.Signals) => void,
): Promise<StopOutcome> {
  if (!(await isRunning(id))) return 'not-running';
  signal(id.pid, 'SIGTERM');
  if (await waitGone(id, graceMs)) {
    // Children still in the group (a RUN step's runtime) must not outlive the service; the group id cannot
    // have been reused while they hold it.
    signal(id.pid, 'SIGKILL');
    return 'terminated';
  }
  signal(id.pid, 'SIGKILL');
  return (await waitGone(id, 5000)) ? 'killed' : 'survived';
}

/** SIGTERM to the group, wait up to graceMs, then SIGKILL and wait again. Never throws. */
export function stopProcessGroup(id: ProcessIdentity, graceMs: number): Promise<StopOutcome> {
  return stop(id, graceMs, signalGroup);
}

/** The same for a process that leads no group of its own (podman's pause process). */
export function stopProcess(id: ProcessIdentity, graceMs: number): Promise<StopOutcome> {
  return stop(id, graceMs, signalProcess);
}
