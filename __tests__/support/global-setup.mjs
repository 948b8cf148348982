// Jest global set-up: the podman matrix (see podman-matrix.ts). Makes sure the test user exists, finds the
// host's podman and mounts the trixie root (podman 5) for this run, then hands the rows and the user to the test
// workers in environment variables. The mounts go away in the global teardown, or, when jest ends another way,
// in a process-exit / signal safety net; .ci/test.mjs then checks nothing is left, and a later run sweeps the
// mounts of a run that was killed outright. Plain JS: jest loads global set-up files without its module mapping.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { constants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { trixieRootSpec } from '../../.ci/test-cache.mjs';
import { mountTrixieRoot, unmountTrixieRoot } from '../../.ci/trixie-root.mjs';

export const MATRIX_ENV = 'ICI_PODMAN_MATRIX';
export const USER_ENV = 'ICI_TEST_USER';
export const RUN_DIR_ENV = 'ICI_RUN_DIR';
/** What the teardown must unmount; unset once it has. */
export const MOUNT_ENV = 'ICI_TRIXIE_MOUNT';
/** Set when jest runs alone and this set-up made the run dir: the teardown removes it then. */
export const OWN_RUN_DIR_ENV = 'ICI_RUN_DIR_OWNED';

const USER = 'icipvm';

/** The ordinary user tests run podman as where root is refused (`podman machine init`), added once. */
function ensureTestUser() {
  if (spawnSync('id', ['-u', USER]).status !== 0) execFileSync('useradd', ['-m', USER]);
  const id = (flag) => Number(execFileSync('id', [flag, USER], { encoding: 'utf8' }));
  return { name: USER, uid: id('-u'), gid: id('-g') };
}

function hostRow() {
  try {
    const text = execFileSync('podman', ['--version'], { encoding: 'utf8', timeout: 30_000 });
    const version = /\d+\.\d+\.\d+/.exec(text)[0];
    return { label: `podman ${version}`, version, root: '/' };
  } catch (error) {
    const unavailable = `the host has no working podman (${error.message}): run \`npm run setup\``;
    return { label: 'podman (host)', version: '0.0.0', root: '/', unavailable };
  }
}

function rootRow(runDir, user) {
  const row = { label: 'podman 5 (trixie root)', version: '5.0.0', root: '' };
  const spec = trixieRootSpec();
  if (!user) return { ...row, unavailable: 'mounting the trixie root needs root' };
  if (!existsSync(spec.dir)) {
    return { ...row, unavailable: `the trixie root ${spec.dir} is not built: run \`npm run setup\`` };
  }
  let mounted;
  try {
    mounted = mountTrixieRoot(spec.dir, runDir, user);
  } catch (error) {
    return { ...row, unavailable: `the trixie root ${spec.dir} could not be mounted: ${error.message}` };
  }
  process.env[MOUNT_ENV] = mounted.dir;
  const version = mounted.podmanVersion;
  return { label: `podman ${version}`, version, root: mounted.mountPoint };
}

/** Unmounts if the teardown did not get to it. */
function safetyNet() {
  const dir = process.env[MOUNT_ENV];
  if (!dir) return;
  delete process.env[MOUNT_ENV];
  unmountTrixieRoot(dir);
}

export default function globalSetup() {
  const user = process.getuid?.() === 0 ? ensureTestUser() : undefined;
  if (user) process.env[USER_ENV] = JSON.stringify(user);
  if (!process.env[RUN_DIR_ENV]) {
    process.env[RUN_DIR_ENV] = mkdtempSync(join(tmpdir(), 'ici-t-'));
    process.env[OWN_RUN_DIR_ENV] = '1';
  }
  process.once('exit', safetyNet);
  // Listening for good (not once): a second signal (Ctrl-C reaches jest both from the terminal and through
  // .ci/test.mjs) must not kill the process half way through the unmounting.
  let stopping = false;
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(signal, () => {
      if (stopping) return;
      stopping = true;
      safetyNet();
      process.exit(128 + constants.signals[signal]);
    });
  }
  process.env[MATRIX_ENV] = JSON.stringify([hostRow(), rootRow(process.env[RUN_DIR_ENV], user)]);
}
