/**
 * Containers the job started through its service in the shared store (`podman run -d` of a test database):
 * conmon keeps them running after the service stops, so a self-hosted runner would collect one per job, ports
 * held and all. The store is shared with the runner's other jobs and whatever else the user runs, so post
 * removes only those it can tell are this job's: their conmon carries the service's mark in its environment.
 * Podman hands conmon the service's LC_* variables (podman 4.x passes only those and a few of its own, podman 5
 * its whole environment), and a locale category libc does not know is ignored by everything else that reads it.
 */
import { readFile } from 'node:fs/promises';
import { podmanRemote, SERVICE_MARK_VARIABLE } from './local-service.js';

const LIST_TIMEOUT_MS = 30_000;

interface InspectedContainer {
  Id?: unknown;
  Name?: unknown;
  Created?: unknown;
  Pod?: unknown;
  IsInfra?: unknown;
  State?: { ConmonPid?: unknown };
}

export interface JobContainer {
  id: string;
  name: string;
  /** Set for a pod's infra container: podman removes it only with its pod. */
  infraOf?: string;
  /** The pod it belongs to, if any. */
  pod?: string;
}

/** Whether the process `pid` runs with `mark` as the service's mark (a process gone or not ours: false). */
async function carriesMark(pid: number, mark: string): Promise<boolean> {
  const environ = await readFile(`/proc/${pid}/environ`).catch(() => undefined);
  if (!environ) return false;
  return environ.toString('latin1').split('\0').includes(`${SERVICE_MARK_VARIABLE}=${mark}`);
}

/** The full ids `podman <args> --quiet --no-trunc` lists (containers or pods) at the service at `url`. */
export async function listIds(url: string, args: readonly string[]): Promise<string[]> {
  const listed = await podmanRemote(url, [...args, '--quiet', '--no-trunc'], { timeoutMs: LIST_TIMEOUT_MS });
  return listed.stdout.split('\n').filter((id) => /^[0-9a-f]{64}$/.test(id));
}

/**
 * The live containers of the service at `url` whose conmon carries `mark` and that were created since
 * `sinceMs` (a container another client made, only restarted through this service, stays theirs). Paused ones
 * too: `ps` leaves them out by default, yet their conmon and processes stay, ports held.
 */
export async function containersStartedBy(
  url: string,
  mark: string,
  sinceMs: number,
): Promise<JobContainer[]> {
  const ids = await listIds(url, ['ps', '--filter', 'status=running', '--filter', 'status=paused']);
  if (ids.length === 0) return [];
  // allowFailure: podman exits 125 when a container went between the two calls, and still prints the others.
  const inspected = await podmanRemote(url, ['container', 'inspect', ...ids], {
    timeoutMs: LIST_TIMEOUT_MS,
    allowFailure: true,
  });
  let list: InspectedContainer[];
  try {
    list = JSON.parse(inspected.stdout || '[]') as InspectedContainer[];
  } catch {
    return [];
  }
  const ours: JobContainer[] = [];
  for (const c of Array.isArray(list) ? list : []) {
    const pid = c.State?.ConmonPid;
    const created = typeof c.Created === 'string' ? Date.parse(c.Created) : NaN;
    if (typeof c.Id !== 'string' || typeof pid !== 'number' || !(created >= sinceMs)) continue;
    if (!(await carriesMark(pid, mark))) continue;
    const pod = typeof c.Pod === 'string' && c.Pod !== '' ? c.Pod : undefined;
    ours.push({
      id: c.Id,
      name: typeof c.Name === 'string' ? c.Name : '',
      ...(pod ? { pod } : {}),
      ...(pod && c.IsInfra === true ? { infraOf: pod } : {}),
    });
  }
  return ours;
}
