/**
 * Moving an initialised machine to another HOME / XDG dirs (cache-scope: machine). Podman's machine JSON holds
 * absolute paths into the data, config and runtime dirs (podman 4: ConfigPath, IgnitionFilePath, ImagePath,
 * CmdLine arguments, Mounts, IdentityPath, pid files, QMP and ready sockets; podman 5: ImagePath, SSH
 * IdentityPath, Mounts, QEMU pid/QMP paths, GvProxy files). Every such path is rewritten from the old roots to
 * the new ones; then every file the machine needs must exist, or the move is refused and nothing is touched.
 */
import { existsSync } from 'node:fs';
import { errorMessage } from '../../core/run.js';

/** The directories a machine's paths were derived from. */
export interface MachineRoots {
  home: string;
  dataHome: string;
  configHome: string;
  /** XDG_RUNTIME_DIR or podman's /tmp/podman-run-<uid> fallback: sockets and pid files live here. */
  runtimeDir?: string;
}

export class MachineRelocationError extends Error {
  constructor(
    message: string,
    readonly missing: string[],
  ) {
    super(message);
    this.name = 'MachineRelocationError';
  }
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function trimSlash(p: string): string {
  return p.length > 1 ? p.replace(/\/+$/, '') : p;
}

/**
 * A function that rewrites every occurrence of an old root inside a string: whole values
 * (`/home/a/.ssh/m`) and embedded ones (`-drive if=virtio,file=/home/a/...`, `local,path=/home/a,mount_tag`).
 * The longest root wins, so a data dir inside HOME maps to the new data dir, not to "new HOME + old suffix".
 */
export function pathRewriter(from: MachineRoots, to: MachineRoots): (value: string) => string {
  const pairs: Array<[string, string]> = [
    [from.home, to.home],
    [from.dataHome, to.dataHome],
    [from.configHome, to.configHome],
  ];
  if (from.runtimeDir && to.runtimeDir) pairs.push([from.runtimeDir, to.runtimeDir]);
  const map = new Map<string, string>();
  for (const [a, b] of pairs) {
    if (a && b && trimSlash(a) !== '/') map.set(trimSlash(a), trimSlash(b));
  }
  if (map.size === 0) return (v) => v;
  const olds = [...map.keys()].sort((a, b) => b.length - a.length);
  // A root counts only at a path boundary: not /home/ab when the root is /home/a.
  const re = new RegExp(`(?<=^|[=,:;\\s"'])(${olds.map(escapeRegExp).join('|')})(?=$|[/,:;\\s"'])`, 'g');
  return (value) => value.replace(re, (m) => map.get(m) ?? m);
}

function mapStrings(value: unknown, fn: (s: string) => string): unknown {
  if (typeof value === 'string') return fn(value);
  if (Array.isArray(value)) return value.map((v) => mapStrings(v, fn));
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, mapStrings(v, fn)]));
  }
  return value;
}

type Json = Record<string, unknown>;

function vmFilePath(value: unknown): string | undefined {
  if (value && typeof value === 'object' && typeof (value as Json).Path === 'string') {
    return (value as Json).Path as string;
  }
  return undefined;
}

export type MachineConfigShape = 'podman4' | 'podman5';

/** Podman 5 writes `Version`, `Resources` and `SSH`; podman 4 kept CPUs, IdentityPath and CmdLine at the top. */
export function machineConfigShape(config: Json): MachineConfigShape {
  if (typeof config.SSH === 'object' && config.SSH !== null && typeof config.Resources === 'object') {
    return 'podman5';
  }
  if (typeof config.IdentityPath === 'string' || Array.isArray(config.CmdLine)) return 'podman4';
  throw new MachineRelocationError('this is not a podman machine config (neither podman 4 nor 5 shape).', []);
}

/**
 * Files the machine cannot work without, by shape. Runtime paths (sockets, pid files) are created on start and
 * are not required.
 */
export function requiredFiles(config: Json): string[] {
  const files = [...machineOwnFiles(config)];
  for (const m of Array.isArray(config.Mounts) ? (config.Mounts as Json[]) : []) {
    if (typeof m?.Source === 'string') files.push(m.Source);
  }
  return [...new Set(files.filter((f) => f !== ''))];
}

/**
 * The files that belong to the machine itself (disk, its config, ignition, ssh identity), as opposed to the host
 * directories it mounts: a restore must be the one placing each of them.
 */
export function machineOwnFiles(config: Json): string[] {
  const shape = machineConfigShape(config);
  const image = vmFilePath(config.ImagePath);
  if (!image) throw new MachineRelocationError('the machine config names no ImagePath.', []);
  const files: Array<string | undefined> = [image];
  if (shape === 'podman4') {
    files.push(vmFilePath(config.ConfigPath), vmFilePath(config.IgnitionFilePath));
    files.push(typeof config.IdentityPath === 'string' ? config.IdentityPath : undefined);
  } else {
    const ssh = config.SSH as Json;
    files.push(typeof ssh.IdentityPath === 'string' ? ssh.IdentityPath : undefined);
  }
  return files.filter((f): f is string => typeof f === 'string' && f !== '');
}

export interface Relocated {
  /** The rewritten JSON text, ready to be written over the machine's config file. */
  text: string;
  name: string;
  shape: MachineConfigShape;
  files: string[];
}

/**
 * Rewrites a machine config JSON from old roots to new ones and checks every required file exists at its new
 * path. Pure apart from the existence check: it writes and deletes nothing, so a refusal leaves the machine,
 * its disk and the cached copy exactly as they were.
 */
export function relocateMachineConfig(
  text: string,
  from: MachineRoots,
  to: MachineRoots,
  exists: (path: string) => boolean = existsSync,
): Relocated {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new MachineRelocationError(`the machine config is not JSON: ${errorMessage(error)}`, []);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new MachineRelocationError('the machine config is not a JSON object.', []);
  }
  const rewritten = mapStrings(parsed, pathRewriter(from, to)) as Json;
  const shape = machineConfigShape(rewritten);
  const files = requiredFiles(rewritten);
  const missing = files.filter((f) => !exists(f));
  const name = typeof rewritten.Name === 'string' ? rewritten.Name : '';
  if (missing.length) {
    throw new MachineRelocationError(
      `refusing to move machine '${name}': after rewriting its paths these files do not exist: ${missing.join(', ')}. Nothing was changed or deleted.`,
      missing,
    );
  }
  return { text: `${JSON.stringify(rewritten, null, 1)}\n`, name, shape, files };
}
