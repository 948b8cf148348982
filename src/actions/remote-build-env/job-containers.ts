/**
 * Containers the job made through its service in the shared store (`podman run -d` of a test database): conmon
 * keeps them running after the service stops, so a self-hosted runner would collect one per job, ports held and
 * all, and exited ones pile up too. The store is shared with the runner's other jobs and whatever else the user
 * runs, so post removes only those it can tell are this job's: those the service annotated with the job's token
 * (container-mark.ts), in any state, and running ones whose conmon carries the service's mark in its environment
 * (where the service could not be given the annotation, and for a container created elsewhere but started through
 * the service). Podman hands conmon the service's LC_* variables (podman 4.x passes only those and a few of its
 * own, podman 5 its whole environment), and a locale category libc does not know is ignored by everything else
 * that reads it.
 */
import { readFile } from 'node:fs/promises';
import { MARK_ANNOTATION } from './container-mark.js';
import { SERVICE_MARK_VARIABLE, type PodmanClient } from './local-service.js';
import { identify, type ProcessIdentity } from './process-group.js';

const LIST_TIMEOUT_MS = 30_000;

interface InspectedContainer {
  Id?: unknown;
  Name?: unknown;
  Created?: unknown;
  Pod?: unknown;
  IsInfra?: unknown;
  State?: { ConmonPid?: unknown };
  Config?: { Annotations?: unknown };
  NetworkSettings?: { Networks?: unknown };
}

export interface JobContainer {
  id: string;
  name: string;
  /** Set for a pod's infra container: podman removes it only with its pod. */
  infraOf?: string;
  /** The pod it belongs to, if any. */
  pod?: string;
  /** The networks it is attached to (compose makes one per project). */
  networks: string[];
}

/** Whether the process `pid` runs with `mark` as the service's mark (a process gone or not ours: false). */
async function carriesMark(pid: number, mark: string): Promise<boolean> {
  const environ = await readFile(`/proc/${pid}/environ`).catch(() => undefined);
  if (!environ) return false;
  return environ.toString('latin1').split('\0').includes(`${SERVICE_MARK_VARIABLE}=${mark}`);
}

/** The full ids `podman <args> --quiet --no-trunc` lists (containers or pods). */
export async function listIds(podman: PodmanClient, args: readonly string[]): Promise<string[]> {
  const listed = await podman([...args, '--quiet', '--no-trunc'], { timeoutMs: LIST_TIMEOUT_MS });
  return listed.stdout.split('\n').filter((id) => /^[0-9a-f]{64}$/.test(id));
}

/**
 * The conmon processes of containers `ids` (those running). Each waits for its container's exit command (`podman
 * container cleanup`, which opens the container's store) before it ends, so it outlives a `podman rm` by a moment.
 */
export async function conmonsOf(podman: PodmanClient, ids: readonly string[]): Promise<ProcessIdentity[]> {
  if (ids.length === 0) return [];
  const inspected = await podman(['container', 'inspect', '--format', '{{.State.ConmonPid}}', ...ids], {
    timeoutMs: LIST_TIMEOUT_MS,
    allowFailure: true,
  });
  const pids = inspected.stdout
    .split('\n')
    .map(Number)
    .filter((pid) => Number.isInteger(pid) && pid > 0);
  return Promise.all(pids.map((pid) => identify(pid)));
}

/** What tells the job's containers: see the top of this file. */
export interface JobMarks {
  /** The service's mark in its conmon's environment. */
  conmon: string;
  /** The token of the annotation MARK_ANNOTATION, if the service was given one. */
  annotation?: string;
  /** Epoch ms the service was started: a container another client made before, only restarted through it, stays theirs. */
  sinceMs: number;
}

function annotated(c: InspectedContainer, token: string | undefined): boolean {
  const annotations = c.Config?.Annotations;
  if (token === undefined || typeof annotations !== 'object' || annotations === null) return false;
  return (annotations as Record<string, unknown>)[MARK_ANNOTATION] === token;
}

/**
 * The job's containers in the store `podman` sees. With an annotation token every container is looked at (exited and
 * created ones too); without, only running and paused ones: `ps` leaves paused ones out by default, yet their
 * conmon and processes stay, ports held.
 */
export async function containersMadeBy(podman: PodmanClient, marks: JobMarks): Promise<JobContainer[]> {
  const listArgs =
    marks.annotation === undefined
      ? ['ps', '--filter', 'status=running', '--filter', 'status=paused']
      : ['ps', '--all'];
  const ids = await listIds(podman, listArgs);
  if (ids.length === 0) return [];
  // allowFailure: podman exits 125 when a container went between the two calls, and still prints the others.
  const inspected = await podman(['container', 'inspect', ...ids], {
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
    if (typeof c.Id !== 'string' || !(created >= marks.sinceMs)) continue;
    const byConmon = typeof pid === 'number' && pid > 0 && (await carriesMark(pid, marks.conmon));
    if (!byConmon && !annotated(c, marks.annotation)) continue;
    const pod = typeof c.Pod === 'string' && c.Pod !== '' ? c.Pod : undefined;
    const networks = c.NetworkSettings?.Networks;
    ours.push({
      id: c.Id,
      name: typeof c.Name === 'string' ? c.Name : '',
      networks: typeof networks === 'object' && networks !== null ? Object.keys(networks) : [],
      ...(pod ? { pod } : {}),
      ...(pod && c.IsInfra === true ? { infraOf: pod } : {}),
    });
  }
  return ours;
}

/** Podman's default network, which every host has: never the job's. */
const DEFAULT_NETWORK = 'podman';

/** The one object `podman <kind> inspect` printed: one object (podman 4 pods) or an array of one. */
function inspectedObject(stdout: string): Record<string, unknown> | undefined {
  try {
    const parsed = JSON.parse(stdout) as unknown;
    const first = Array.isArray(parsed) ? (parsed[0] as unknown) : parsed;
    return typeof first === 'object' && first !== null ? (first as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** Creation time and name: `Created`/`Name` for pods, `created`/`name` for networks. */
function inspectedCreated(first: Record<string, unknown> | undefined): { createdMs: number; name?: string } {
  const created = first?.Created ?? first?.created;
  const name = first?.Name ?? first?.name;
  return {
    createdMs: typeof created === 'string' ? Date.parse(created) : NaN,
    ...(typeof name === 'string' ? { name } : {}),
  };
}

/** The ids of the containers a pod's inspection lists (infra included); undefined when it lists none readable. */
function podMembers(first: Record<string, unknown> | undefined): string[] | undefined {
  // Podman leaves the list out of an empty pod's inspection (omitempty), and says NumContainers 0.
  const members = first?.Containers ?? (first?.NumContainers === 0 ? [] : undefined);
  if (!Array.isArray(members)) return undefined;
  const ids = members.map((m) => (m as { Id?: unknown } | null)?.Id);
  return ids.every((id): id is string => typeof id === 'string') ? ids : undefined;
}

/**
 * The pods whose infra container is the job's and that hold nothing but the job's containers: those post removes
 * whole (`pod rm --force`, the only way their infra container goes). A pod another client put a container in
 * stays, infra and all: --force would remove that container too, created, exited or running.
 */
export async function podsOnlyOurs(podman: PodmanClient, ours: readonly JobContainer[]): Promise<string[]> {
  const ids = new Set(ours.map((c) => c.id));
  const pods: string[] = [];
  for (const pod of new Set(ours.flatMap((c) => (c.infraOf ? [c.infraOf] : [])))) {
    const inspected = await podman(['pod', 'inspect', pod], {
      timeoutMs: LIST_TIMEOUT_MS,
      allowFailure: true,
    });
    const members = inspected.exitCode === 0 ? podMembers(inspectedObject(inspected.stdout)) : undefined;
    if (members?.every((id) => ids.has(id))) pods.push(pod);
  }
  return pods;
}

/**
 * Once the job's containers are gone: the pods they were in (those without an infra container: a pod with one went
 * with it) and their networks other than podman's default, each made since the service started and left with no
 * container at all. Podman refuses to remove a network any container is attached to, running or not; a pod is
 * removed only when its inspection lists no container, so nothing another client still uses goes. Returns the
 * names removed.
 */
export async function removeEmptied(
  podman: PodmanClient,
  ours: readonly JobContainer[],
  sinceMs: number,
): Promise<string[]> {
  const removed: string[] = [];
  const candidates: Array<['pod' | 'network', string]> = [
    ...[...new Set(ours.flatMap((c) => (c.pod && !c.infraOf ? [c.pod] : [])))].map(
      (p) => ['pod', p] as ['pod', string],
    ),
    ...[...new Set(ours.flatMap((c) => c.networks))]
      .filter((n) => n !== DEFAULT_NETWORK)
      .map((n) => ['network', n] as ['network', string]),
  ];
  for (const [kind, name] of candidates) {
    const inspected = await podman([kind, 'inspect', name], {
      timeoutMs: LIST_TIMEOUT_MS,
      allowFailure: true,
    });
    const first = inspected.exitCode === 0 ? inspectedObject(inspected.stdout) : undefined;
    const seen = inspectedCreated(first);
    if (!(seen.createdMs >= sinceMs)) continue;
    // `pod rm` without --force still removes the containers of a pod that are not running (created or exited):
    // one another client put in it would go too. Podman has no "only if empty"; the window is this call's length.
    if (kind === 'pod' && podMembers(first)?.length !== 0) continue;
    const rm = await podman([kind, 'rm', name], { timeoutMs: LIST_TIMEOUT_MS, allowFailure: true });
    if (rm.exitCode === 0) removed.push(`${kind} ${seen.name ?? name}`);
  }
  return removed;
}
