/**
 * cache-scope: machine, the filesystem part. After init, the machine's files are copied into a staging dir at a
 * stable path (the cache entry); on a later hit they are put into THIS run's HOME / XDG dirs with the config
 * JSON's paths rewritten, and podman's connections are added again. A restore checks everything it can before
 * it writes anything and never deletes: a refusal leaves the user's files and the cached copy as they were.
 */
import { constants, existsSync } from 'node:fs';
import { access, copyFile, lstat, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { writeFileAtomic } from '../../core/atomic.js';
import { readRegularFile } from '../../core/files.js';
import { exec } from '../../core/exec.js';
import { ActionError, errorMessage } from '../../core/run.js';
import {
  machineOwnFiles,
  MachineRelocationError,
  relocateMachineConfig,
  type Relocated,
} from './machine-config.js';
import {
  CONFIG_FILE,
  MANIFEST_FILE,
  OPTIONAL_FILES,
  currentRoots,
  machineConnections,
  machineFiles,
  parseManifest,
  restorePlan,
  type MachineManifest,
  type RestorePlan,
} from './machine-manifest.js';
import { machineDirs, type VmType } from './podman-host.js';

const CONNECTION_TIMEOUT_MS = 60_000;

function uid(): number {
  return process.getuid?.() ?? 0;
}

/** Copy-on-write where the filesystem can, a plain copy elsewhere (disks are large). */
async function copy(from: string, to: string): Promise<void> {
  await copyFile(from, to, constants.COPYFILE_FICLONE);
}

/**
 * A restored staging dir is not saved again (post saves only on a miss), so its files can be moved: a rename
 * costs nothing where a disk copy costs seconds per GiB. Across filesystems it is a copy.
 */
async function moveStaged(from: string, to: string): Promise<void> {
  try {
    await rename(from, to);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EXDEV') throw error;
    await copy(from, to);
  }
}

/** Copies the machine `name` (as podman just created it) into `stageDir`, replacing an older staging. */
export async function stageMachine(
  stageDir: string,
  vmType: VmType,
  name: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<MachineManifest> {
  const configPath = join(machineDirs(vmType, env).config, `${name}.json`);
  const config = JSON.parse(await readFile(configPath, 'utf8')) as Record<string, unknown>;
  const files = machineFiles(config, configPath).filter(
    (f) => !OPTIONAL_FILES.has(f.staged) || existsSync(f.original),
  );
  await rm(stageDir, { recursive: true, force: true });
  await mkdir(stageDir, { recursive: true, mode: 0o700 });
  await copy(configPath, join(stageDir, CONFIG_FILE));
  for (const f of files) await copy(f.original, join(stageDir, f.staged));
  const manifest: MachineManifest = {
    version: 1,
    name,
    vmType,
    roots: currentRoots(env, uid()),
    configPath,
    files,
    connections: machineConnections(config),
  };
  await writeFileAtomic(join(stageDir, MANIFEST_FILE), `${JSON.stringify(manifest, null, 1)}\n`, 0o600);
  return manifest;
}

/** The nearest existing ancestor of `path` must be a writable directory, so mkdir + copy can succeed. */
async function placeable(path: string): Promise<string | undefined> {
  if (existsSync(path)) return `${path} already exists (it is not overwritten)`;
  let dir = dirname(path);
  while (!existsSync(dir)) dir = dirname(dir);
  const s = await stat(dir);
  if (!s.isDirectory()) return `${dir} is not a directory`;
  try {
    await access(dir, constants.W_OK);
  } catch {
    return `${dir} is not writable`;
  }
  return undefined;
}

/** The staged JSON files are a few KB; what is not a small regular file is no staged machine. */
const STAGED_JSON_LIMIT = 1024 * 1024;

async function readStagedJson(path: string): Promise<string> {
  return (await readRegularFile(path, STAGED_JSON_LIMIT)).toString('utf8');
}

/**
 * A staged file that is a symlink would be moved as the link: the machine's disk (which the VM writes) would be
 * whatever it points at. A cache entry carries regular files only.
 */
async function irregularStaged(stageDir: string, staged: string): Promise<string | undefined> {
  const info = await lstat(join(stageDir, staged)).catch(() => undefined);
  if (!info) return `the staged ${staged} is missing`;
  return info.isFile() ? undefined : `the staged ${staged} is not a regular file`;
}

export interface RestoredMachine {
  name: string;
  configPath: string;
  files: string[];
}

/**
 * Puts the staged machine into this run's HOME / XDG dirs. Refuses (ActionError, nothing written or deleted)
 * when a target exists already, cannot be created, or a file the rewritten config needs would be missing.
 */
export async function restoreMachine(
  stageDir: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<RestoredMachine> {
  let manifest: MachineManifest;
  try {
    manifest = parseManifest(await readStagedJson(join(stageDir, MANIFEST_FILE)));
  } catch (error) {
    throw new ActionError(`the cached machine is unreadable: ${errorMessage(error)}`);
  }
  const refuse = (why: string) =>
    new ActionError(
      `refusing to restore machine '${manifest.name}': ${why}. Nothing was changed or deleted.`,
    );
  const to = currentRoots(env, uid());
  let plan: RestorePlan;
  try {
    plan = restorePlan(manifest, to);
  } catch (error) {
    throw refuse(errorMessage(error));
  }
  const targets = [plan.configTarget, ...plan.files.map((f) => f.target)];
  const problems = (
    await Promise.all([
      ...[CONFIG_FILE, ...plan.files.map((f) => f.staged)].map((f) => irregularStaged(stageDir, f)),
      ...targets.map(placeable),
    ])
  ).filter((p): p is string => !!p);
  if (problems.length) throw refuse(problems.join('; '));

  // The check runs against the files as they will be once placed: nothing is written if it fails.
  const placed = new Set(targets);
  let relocated: Relocated;
  try {
    relocated = relocateMachineConfig(
      await readStagedJson(join(stageDir, CONFIG_FILE)),
      manifest.roots,
      to,
      (p) => placed.has(p) || existsSync(p),
    );
  } catch (error) {
    if (error instanceof MachineRelocationError) throw refuse(error.message);
    throw refuse(`its config cannot be read: ${errorMessage(error)}`);
  }
  // The config, not the manifest, is what podman reads: each of the machine's own files it names must be one this
  // restore places, never some other file that happens to exist (a disk the VM would write into).
  const foreign = machineOwnFiles(JSON.parse(relocated.text) as Record<string, unknown>).filter(
    (f) => !placed.has(f),
  );
  if (foreign.length) {
    throw refuse(`its config names ${foreign.join(', ')}, not one of the files restored from the cache`);
  }

  for (const f of plan.files) {
    await mkdir(dirname(f.target), { recursive: true, mode: 0o700 });
    await moveStaged(join(stageDir, f.staged), f.target);
  }
  await mkdir(dirname(plan.configTarget), { recursive: true, mode: 0o700 });
  await writeFile(plan.configTarget, relocated.text, { mode: 0o644, flag: 'wx' });
  const missing = relocated.files.filter((f) => !existsSync(f));
  if (missing.length) throw refuse(`after copying, these files are missing: ${missing.join(', ')}`);

  const identity = plan.files.find((f) => f.staged === 'identity')?.target;
  for (const c of manifest.connections) {
    const args = [
      'system',
      'connection',
      'add',
      ...(identity ? ['--identity', identity] : []),
      c.name,
      c.uri,
    ];
    await exec('podman', args, { timeoutMs: CONNECTION_TIMEOUT_MS, env });
  }
  return { name: manifest.name, configPath: plan.configTarget, files: relocated.files };
}
