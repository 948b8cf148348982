// Podman 5 for the tests: the Debian trixie root `npm run setup` builds once per package list (setup.mjs),
// mounted for ONE test run and unmounted after it.
//
// The cached root is never written to: each run mounts an overlay of it (its own upper dir), which is also the
// mount point podman 5 needs its root to be (else `podman import` fails to remount /). Inside, /proc, /sys, /dev,
// /tmp, the run's TMPDIR and the checkout appear at the same paths as outside, so temp dirs, sockets and dist/
// mean the same on both sides; /sys and /dev recursively and as slaves (runc needs the cgroup mounts below /sys,
// and nothing done inside may propagate back). The test user is added to the root's passwd (ssh-keygen needs it)
// and subuid/subgid (rootless podman needs its ranges).
import { execFileSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { mountsBelow } from './leftovers.mjs';

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const TIMEOUT_MS = 30_000;

function run(command, args) {
  return execFileSync(command, args, { encoding: 'utf8', timeout: TIMEOUT_MS, stdio: 'pipe' });
}

/** Directories seen at the same path inside the root (nested ones are covered by their parent). */
function samePathDirs() {
  const dirs = ['/tmp', tmpdir(), REPO_ROOT].map((d) => resolve(d));
  return dirs.filter((d, i) => !dirs.slice(0, i).some((p) => d === p || d.startsWith(`${p}/`)));
}

function addUser(mountPoint, user) {
  for (const [file, key] of [
    ['passwd', user.name],
    ['group', String(user.gid)],
  ]) {
    const line = run('getent', [file, key]).trim();
    const path = join(mountPoint, 'etc', file);
    const name = line.split(':')[0];
    if (
      !readFileSync(path, 'utf8')
        .split('\n')
        .some((l) => l.startsWith(`${name}:`))
    ) {
      appendFileSync(path, `${line}\n`);
    }
  }
  // Its subordinate ids too: rootless podman 5 in the root maps them with the root's newuidmap, which reads the
  // root's files.
  for (const file of ['subuid', 'subgid']) {
    const hostFile = join('/etc', file);
    if (!existsSync(hostFile)) continue;
    const host = readFileSync(hostFile, 'utf8').split('\n');
    const lines = host.filter((l) => l.startsWith(`${user.name}:`) || l.startsWith(`${user.uid}:`));
    const path = join(mountPoint, 'etc', file);
    const present = existsSync(path) ? readFileSync(path, 'utf8').split('\n') : [];
    const missing = lines.filter((l) => !present.includes(l));
    if (missing.length > 0) appendFileSync(path, missing.map((l) => `${l}\n`).join(''));
  }
}

/**
 * Mounts the root below `<runDir>/trixie`; returns { mountPoint, dir, podmanVersion }. Undoes what it did if a
 * step fails.
 */
export function mountTrixieRoot(rootDir, runDir, user) {
  const dir = join(runDir, 'trixie');
  const upper = join(dir, 'upper');
  const work = join(dir, 'work');
  const mountPoint = join(dir, 'root');
  for (const d of [upper, work, mountPoint]) mkdirSync(d, { recursive: true });
  try {
    const overlay = `lowerdir=${rootDir},upperdir=${upper},workdir=${work}`;
    run('mount', ['-t', 'overlay', 'overlay', '-o', overlay, mountPoint]);
    run('mount', ['--bind', '/proc', join(mountPoint, 'proc')]);
    for (const d of ['/sys', '/dev']) {
      run('mount', ['--rbind', d, join(mountPoint, d)]);
      run('mount', ['--make-rslave', join(mountPoint, d)]);
    }
    for (const d of samePathDirs()) {
      mkdirSync(join(mountPoint, d), { recursive: true });
      run('mount', ['--bind', d, join(mountPoint, d)]);
    }
    if (user) addUser(mountPoint, user);
    const version = /(\d+\.\d+\.\d+)/.exec(run('chroot', [mountPoint, '/usr/bin/podman', '--version']));
    if (!version) throw new Error(`no podman version in ${rootDir}`);
    return { mountPoint, dir, podmanVersion: version[1] };
  } catch (error) {
    unmountTrixieRoot(dir);
    throw error;
  }
}

/**
 * Unmounts everything below `dir` (lazily when busy: a process still inside must not keep the run from
 * finishing) and removes it. Returns the mount points that could not be detached. Synchronous, so it also works
 * from a process 'exit' handler.
 */
export function unmountTrixieRoot(dir) {
  for (const lazy of [false, true]) {
    for (const point of mountsBelow(dir).reverse()) {
      try {
        run('umount', ['--recursive', ...(lazy ? ['--lazy'] : []), point]);
      } catch {
        // taken by a parent's recursive unmount already, or busy: the next pass detaches it lazily
      }
    }
    if (mountsBelow(dir).length === 0) break;
  }
  const left = mountsBelow(dir);
  if (left.length === 0) rmSync(dir, { recursive: true, force: true });
  return left;
}
