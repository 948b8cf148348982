/**
 * cache-scope: machine, the pure part. Which files make up an initialised machine, how they are named inside
 * the staging dir that goes into the cache, the manifest recording where they came from, and where each one
 * belongs in another HOME / XDG layout.
 */
import { dirname, isAbsolute, join } from 'node:path';
import { isMachineName } from './inputs.js';
import { machineConfigShape, pathRewriter, type MachineRoots } from './machine-config.js';

export const MANIFEST_FILE = 'manifest.json';
/** The staged copy of the machine's config JSON (rewritten on restore, so it is not a plain copy). */
export const CONFIG_FILE = 'config.json';

export interface StagedFile {
  /** File name inside the staging dir. */
  staged: string;
  /** Absolute path the file had when it was saved. */
  original: string;
}

export interface MachineConnection {
  name: string;
  uri: string;
}

export interface MachineManifest {
  version: 1;
  name: string;
  vmType: string;
  roots: MachineRoots;
  /** The config JSON's own path when it was saved. */
  configPath: string;
  files: StagedFile[];
  connections: MachineConnection[];
}

type Json = Record<string, unknown>;

function pathOf(value: unknown): string | undefined {
  if (typeof value === 'string' && value) return value;
  if (value && typeof value === 'object' && typeof (value as Json).Path === 'string') {
    return (value as Json).Path as string;
  }
  return undefined;
}

function identityOf(config: Json): string | undefined {
  return machineConfigShape(config) === 'podman4'
    ? pathOf(config.IdentityPath)
    : pathOf((config.SSH as Json).IdentityPath);
}

/** Staged files a machine may lack: the public key, and podman 5's ignition (a WSL machine has none). */
export const OPTIONAL_FILES: ReadonlySet<string> = new Set(['identity.pub', 'ignition']);

/**
 * Every name a staged file can have. The manifest comes back from a cache entry: a name outside this set
 * (`../x`) would make the restore move a file from outside the staging dir into the new HOME.
 */
const STAGED_NAMES: ReadonlySet<string> = new Set(['disk', 'ignition', 'identity', 'identity.pub']);

/**
 * The files besides the config JSON (at `configPath`) that a machine is made of: its disk, ignition file and ssh
 * identity. Podman 4 names the ignition file in the config; podman 5 does not, and keeps it beside the config
 * as `<name>.ign` (its start passes it to the VM, so a machine moved without it cannot boot). The public key is
 * not named in the config but sits next to the identity.
 */
export function machineFiles(config: Json, configPath: string): StagedFile[] {
  const files: StagedFile[] = [];
  const add = (staged: string, original: string | undefined) => {
    if (original) files.push({ staged, original });
  };
  add('disk', pathOf(config.ImagePath));
  add(
    'ignition',
    machineConfigShape(config) === 'podman4'
      ? pathOf(config.IgnitionFilePath)
      : join(dirname(configPath), `${String(config.Name)}.ign`),
  );
  const identity = identityOf(config);
  add('identity', identity);
  add('identity.pub', identity && `${identity}.pub`);
  if (!files.some((f) => f.staged === 'disk')) throw new Error('the machine config names no ImagePath.');
  return files;
}

/** The two connections `podman machine init` adds: the machine's user and its root (podman 4 and 5 shapes). */
export function machineConnections(config: Json): MachineConnection[] {
  const name = String(config.Name ?? '');
  const ssh = machineConfigShape(config) === 'podman4' ? config : (config.SSH as Json);
  const uid =
    machineConfigShape(config) === 'podman4' ? config.UID : (config.HostUser as Json | undefined)?.UID;
  const port = Number(ssh.Port);
  const user = String(ssh.RemoteUsername ?? 'core');
  if (!name || !Number.isInteger(port) || port <= 0 || uid === undefined) return [];
  return [
    { name, uri: `ssh://${user}@localhost:${port}/run/user/${String(uid)}/podman/podman.sock` },
    { name: `${name}-root`, uri: `ssh://root@localhost:${port}/run/podman/podman.sock` },
  ];
}

/** The XDG roots podman derives a machine's paths from, as podman itself falls back when a variable is unset. */
export function currentRoots(env: NodeJS.ProcessEnv, uid: number): MachineRoots {
  const home = env.HOME ?? '';
  return {
    home,
    dataHome: env.XDG_DATA_HOME || join(home, '.local', 'share'),
    configHome: env.XDG_CONFIG_HOME || join(home, '.config'),
    runtimeDir: env.XDG_RUNTIME_DIR || `/tmp/podman-run-${uid}`,
  };
}

/**
 * One of the two connections machineConnections derives: the machine's name (or `<name>-root`) and an ssh URI to
 * localhost. A cached manifest names them, and they are passed to `podman system connection add`.
 */
function isMachineConnection(name: string, c: MachineConnection): boolean {
  return (
    (c.name === name || c.name === `${name}-root`) &&
    /^ssh:\/\/[A-Za-z0-9_.-]+@localhost:\d{1,5}\/[A-Za-z0-9_./-]+$/.test(c.uri)
  );
}

export function parseManifest(text: string): MachineManifest {
  const m = JSON.parse(text) as Partial<MachineManifest>;
  const roots = m.roots as Partial<MachineRoots> | undefined;
  const ok =
    m.version === 1 &&
    typeof m.name === 'string' &&
    m.name !== '' &&
    typeof m.vmType === 'string' &&
    typeof m.configPath === 'string' &&
    typeof roots?.home === 'string' &&
    typeof roots.dataHome === 'string' &&
    typeof roots.configHome === 'string' &&
    Array.isArray(m.files) &&
    m.files.every((f) => typeof f?.staged === 'string' && typeof f.original === 'string') &&
    Array.isArray(m.connections) &&
    m.connections.every(
      (c) => typeof c?.name === 'string' && typeof c.uri === 'string' && isMachineConnection(m.name!, c),
    ) &&
    isMachineName(m.name);
  if (!ok) throw new Error('the cached machine manifest is not a version 1 manifest.');
  return m as MachineManifest;
}

export interface RestorePlan {
  configTarget: string;
  /** Every staged file (not the config) and where it goes. */
  files: Array<{ staged: string; target: string }>;
}

/** Absolute, with no `.` or `..` segment: a root prefix then says where it lands (`<HOME>/../x` is not in HOME). */
function isPlainAbsolute(path: string): boolean {
  return isAbsolute(path) && !path.split('/').some((s) => s === '.' || s === '..') && !path.includes('\0');
}

/**
 * Where each saved file goes under the new roots. A file saved outside every old root would land at the same
 * absolute path as before, which another HOME cannot be trusted to hold: that is refused, and so is a path that
 * climbs out of its root with `..`.
 */
export function restorePlan(manifest: MachineManifest, to: MachineRoots): RestorePlan {
  const rewrite = pathRewriter(manifest.roots, to);
  const move = (original: string) => {
    if (!isPlainAbsolute(original)) throw new Error(`${JSON.stringify(original)} is no plain absolute path.`);
    const target = rewrite(original);
    if (target === original && !sameRoots(manifest.roots, to)) {
      throw new Error(`${original} is outside HOME and the XDG dirs it was saved from; it cannot be moved.`);
    }
    return target;
  };
  const seen = new Set<string>();
  for (const { staged } of manifest.files) {
    if (!STAGED_NAMES.has(staged) || seen.has(staged)) {
      throw new Error(`${JSON.stringify(staged)} is not a staged machine file name (or named twice).`);
    }
    seen.add(staged);
  }
  return {
    configTarget: move(manifest.configPath),
    files: manifest.files.map((f) => ({ staged: f.staged, target: move(f.original) })),
  };
}

function sameRoots(a: MachineRoots, b: MachineRoots): boolean {
  return a.home === b.home && a.dataHome === b.dataHome && a.configHome === b.configHome;
}
