// Jest global teardown: unmounts this run's trixie root (see global-setup.mjs).
import { rmSync } from 'node:fs';
import { unmountTrixieRoot } from '../../.ci/trixie-root.mjs';
import { MOUNT_ENV, OWN_RUN_DIR_ENV, RUN_DIR_ENV } from './global-setup.mjs';

export default function globalTeardown() {
  const dir = process.env[MOUNT_ENV];
  delete process.env[MOUNT_ENV];
  const left = dir ? unmountTrixieRoot(dir) : [];
  if (left.length) throw new Error(`could not unmount the trixie root: ${left.join(', ')}`);
  // Under .ci/test.mjs the run dir is checked for leftovers and removed there.
  if (process.env[OWN_RUN_DIR_ENV]) rmSync(process.env[RUN_DIR_ENV], { recursive: true, force: true });
}
