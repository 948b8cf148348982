/**
 * The podman versions the podman-dependent e2e tests run against, one row each: the host's own podman (4.3 on
 * Debian 12) and podman 5 from the trixie root the global set-up mounts. Tests name the row in their titles
 * (`[podman 4.3.1]`, `[podman 5.4.2]`) and run every podman command, and the bundled action itself, through
 * the row: on the host directly, or inside the root with the root's own podman and node.
 *
 * Inside a root, commands run as `chroot [--userspec=U:G] <root> /usr/bin/env -i [-C dir] VAR=... cmd`: env
 * passes every variable as given, where a shell (`sh -c 'cd ...'`) would silently drop names holding `-`
 * (`INPUT_TLS-VERIFY`, `STATE_ici-...`).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { exec, type ExecResult } from '../../src/core/exec.js';
import { mountPointsUnder } from '../../src/actions/remote-build-env/mounts.js';
import { REPO_ROOT } from './harness.js';

export interface PodmanVariant {
  /** `podman 4.3.1`: what test titles show. */
  label: string;
  version: string;
  major: number;
  minor: number;
  /** `/` for the host's podman, else the mounted root holding this podman. */
  root: string;
  /** Why this podman cannot run here; a row with it fails (loudly) instead of being skipped. */
  unavailable?: string;
}

/** Set by the global set-up (global-setup.mjs); jest workers inherit them. */
const MATRIX_ENV = 'ICI_PODMAN_MATRIX';
const USER_ENV = 'ICI_TEST_USER';

/** Every row, host first. For `describe.each(podmanVersions())('[$label] ...', ...)`. */
export function podmanVersions(): PodmanVariant[] {
  const raw = process.env[MATRIX_ENV];
  if (!raw) {
    throw new Error(
      `${MATRIX_ENV} is not set: run the tests with jest's global set-up (node .ci/test.mjs ...).`,
    );
  }
  const rows = JSON.parse(raw) as Array<Omit<PodmanVariant, 'major' | 'minor'>>;
  return rows.map((r) => {
    const [major, minor] = r.version.split('.').map(Number);
    return { ...r, major: major!, minor: minor! };
  });
}

export function hostPodman(): PodmanVariant {
  return podmanVersions()[0]!;
}

/** For a row's beforeAll: a podman that is not there fails the row with the reason and the fix. */
export function requireAvailable(v: PodmanVariant): void {
  if (v.unavailable) throw new Error(`${v.label} is not available: ${v.unavailable}`);
}

export interface User {
  uid: number;
  gid: number;
}

/** The ordinary user the global set-up made (`podman machine init` refuses root), in the roots too. */
export function testUser(): User & { name: string } {
  const raw = process.env[USER_ENV];
  if (!raw) throw new Error('no test user: the tests that need one must run as root (see .ci/setup.mjs).');
  return JSON.parse(raw) as User & { name: string };
}

export interface RunAs {
  /** Run as this user instead of root. */
  user?: User;
  /**
   * With `user` in a root: enter the root by pivot_root in a mount namespace of its own, not by chroot, so that
   * rootless podman can make its user namespace (the kernel refuses one to a chrooted process: `cannot clone:
   * Operation not permitted`).
   */
  pivot?: boolean;
  /** The COMPLETE environment (nothing is inherited inside a root). */
  env: NodeJS.ProcessEnv;
  cwd?: string;
}

/** Variables every podman of this row needs: podman 5 warns about cgroups v1 on every call on this host. */
export function variantEnv(v: PodmanVariant): Record<string, string> {
  return v.major >= 5 ? { PODMAN_IGNORE_CGROUPSV1_WARNING: '1' } : {};
}

/**
 * Makes the root the mount namespace's own root (pivot_root; the old root is detached) and execs the rest of the
 * arguments there. The root's mount point is shared inside, as rootless podman wants `/` to be. Run by the host's
 * sh under `unshare --mount --propagation private`; the root's Debian has no mount(8), so the host's is used
 * through the old root before it goes.
 */
const PIVOT_SCRIPT =
  'cd "$1" && shift && pivot_root . mnt && cd / && /mnt/usr/bin/mount --make-rshared / && ' +
  '/mnt/usr/bin/umount --lazy /mnt && exec "$@"';

/** The command and leading arguments that enter this row's system as `options` say, up to `env -i`. */
function entry(
  v: PodmanVariant,
  options: Pick<RunAs, 'user' | 'pivot'>,
): { command: string; args: string[] } {
  const { user } = options;
  if (user && options.pivot && v.root !== '/') {
    const setpriv = ['/usr/bin/setpriv', `--reuid=${user.uid}`, `--regid=${user.gid}`, '--init-groups'];
    return {
      command: 'unshare',
      args: ['--mount', '--propagation', 'private', 'sh', '-c', PIVOT_SCRIPT, 'sh', v.root, ...setpriv],
    };
  }
  return { command: 'chroot', args: [...(user ? [`--userspec=${user.uid}:${user.gid}`] : []), v.root] };
}

/** The command line that runs `command args` as `options` say with this row's system. */
export function commandFor(
  v: PodmanVariant,
  command: string,
  args: readonly string[],
  options: RunAs,
): { command: string; args: string[]; env: NodeJS.ProcessEnv } {
  const env = { ...options.env, ...variantEnv(v) };
  if (v.root === '/' && !options.user && !options.cwd) return { command, args: [...args], env };
  const pairs = Object.entries(env)
    .filter((e): e is [string, string] => e[1] !== undefined)
    .map(([k, value]) => `${k}=${value}`);
  const enter = entry(v, options);
  return {
    command: enter.command,
    args: [
      ...enter.args,
      '/usr/bin/env',
      '-i',
      ...(options.cwd ? ['-C', options.cwd] : []),
      ...pairs,
      command,
      ...args,
    ],
    env: { PATH: process.env.PATH },
  };
}

export function runWith(
  v: PodmanVariant,
  command: string,
  args: readonly string[],
  options: RunAs & { timeoutMs?: number; allowFailure?: boolean },
): Promise<ExecResult> {
  const line = commandFor(v, command, args, options);
  return exec(line.command, line.args, {
    env: line.env,
    timeoutMs: options.timeoutMs ?? 120_000,
    allowFailure: options.allowFailure,
  });
}

export interface StepScripts {
  mainScript: string;
  postScript: string;
  actionYml: string;
}

/**
 * Step scripts for the runner harness that run the bundled action with this row's node (inside the root: the
 * root's node and podman; dist/ is at the same path there) and, with `user`, as that user the way a runner runs
 * steps as its own user: the step's files are handed over to the user first.
 */
export function stepScripts(
  v: PodmanVariant,
  action: string,
  dir: string,
  user?: User,
  options: {
    /** See RunAs.pivot. */
    pivot?: boolean;
    /** Leave podman 5's cgroups-v1 warnings on, as a user on such a host sees them. */
    warnings?: boolean;
    /** Run this script as main instead of the bundled one (a wrapper that imports it under a test preload). */
    main?: string;
  } = {},
): StepScripts {
  const dist = (phase: string) => join(REPO_ROOT, 'dist', action, `${phase}.js`);
  const actionYml = join(REPO_ROOT, 'actions', action, 'action.yml');
  if (v.root === '/' && !user) {
    return { mainScript: options.main ?? dist('main'), postScript: dist('post'), actionYml };
  }
  const write = (phase: string) => {
    const spec = {
      enter: entry(v, { user, pivot: options.pivot }),
      user,
      node: v.root === '/' ? process.execPath : '/usr/bin/node',
      target: phase === 'main' && options.main ? options.main : dist(phase),
      extraEnv: options.warnings ? {} : variantEnv(v),
    };
    const variant =
      `${user ? `-${user.uid}` : ''}${options.pivot ? '-pivot' : ''}${options.warnings ? '-warn' : ''}` +
      `${options.main ? `-${basename(options.main, '.mjs')}` : ''}`;
    const path = join(dir, `${action}-${phase}-${v.version}${variant}.mjs`);
    writeFileSync(path, `const spec = ${JSON.stringify(spec)};\n${STEP_WRAPPER}`);
    return path;
  };
  return { mainScript: write('main'), postScript: write('post'), actionYml };
}

const STEP_WRAPPER = `import { spawn } from 'node:child_process';
import { chmodSync, chownSync } from 'node:fs';
import { dirname } from 'node:path';
const e = { ...process.env, ...spec.extraEnv };
if (spec.user) {
  chmodSync(dirname(dirname(e.GITHUB_OUTPUT)), 0o755);
  for (const p of [dirname(e.GITHUB_OUTPUT), e.GITHUB_OUTPUT, e.GITHUB_STATE, e.GITHUB_ENV, e.GITHUB_PATH,
    e.GITHUB_STEP_SUMMARY, e.GITHUB_WORKSPACE]) chownSync(p, spec.user.uid, spec.user.gid);
}
const args = [...spec.enter.args, '/usr/bin/env', '-i', '-C', e.GITHUB_WORKSPACE,
  ...Object.entries(e).map(([k, v]) => k + '=' + v), spec.node, spec.target];
const child = spawn(spec.enter.command, args, { stdio: 'inherit' });
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => child.kill(signal));
child.on('close', (code, signal) => process.exit(code ?? (signal ? 137 : 1)));
`;

/**
 * Mount points at or below `dir` as seen from outside: a podman inside a root mounts below the root's mount
 * point, so both places are looked at.
 */
export function mountsUnder(v: PodmanVariant, dir: string): string[] {
  const info = readFileSync('/proc/self/mountinfo', 'utf8');
  const inside = v.root === '/' ? [] : mountPointsUnder(info, join(v.root, dir));
  return [...mountPointsUnder(info, dir), ...inside];
}

/**
 * Where this podman's buildah keeps `RUN --mount=type=cache` data for a service running as `uid`:
 * `$TMPDIR/buildah-cache` up to podman 4.3 (buildah 1.28), `$TMPDIR/buildah-cache-<uid>` from podman 4.4
 * (buildah 1.29, internal/parse CacheParent) on.
 */
export function buildahCacheDir(v: PodmanVariant, tmpdir: string, uid = 0): string {
  const perUser = v.major > 4 || (v.major === 4 && v.minor >= 4);
  return join(tmpdir, perUser ? `buildah-cache-${uid}` : 'buildah-cache');
}
