/** restoreMachine's refusals, on the real filesystem with a staged podman 4 machine (no podman is run). */
import { afterAll, afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import {
  closeSync,
  constants,
  existsSync,
  openSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from '../support/harness.js';
import { restoreMachine } from '../../src/actions/preseed-podman-vm/machine-cache.js';
import {
  machineConnections,
  machineFiles,
  type MachineManifest,
} from '../../src/actions/preseed-podman-vm/machine-manifest.js';

const OLD = '/home/runner/work/_temp/ici-h1';
const tmp = mkdtempSync(join(tmpdir(), 'preseed-mr-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let silentWriter: number | undefined;
afterEach(() => {
  if (silentWriter !== undefined) closeSync(silentWriter);
  silentWriter = undefined;
});
const configText = readFileSync(
  join(REPO_ROOT, '__tests__/fixtures/preseed-podman-vm/podman4-qemu-machine.json'),
  'utf8',
);
let stage: string;
let home: string;
let caseDir: string;

function manifestOf(): MachineManifest {
  return JSON.parse(readFileSync(join(stage, 'manifest.json'), 'utf8')) as MachineManifest;
}

function tree(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).sort();
}

beforeEach(() => {
  const dir = mkdtempSync(join(tmp, 'case-'));
  caseDir = dir;
  stage = join(dir, 'stage');
  home = join(dir, 'home');
  mkdirSync(stage);
  mkdirSync(home);
  const config = JSON.parse(configText) as Record<string, unknown>;
  const configPath = `${OLD}/.config/containers/podman/machine/qemu/tm1.json`;
  const manifest: MachineManifest = {
    version: 1,
    name: 'tm1',
    vmType: 'qemu',
    roots: { home: OLD, dataHome: `${OLD}/.local/share`, configHome: `${OLD}/.config` },
    configPath,
    files: machineFiles(config, configPath),
    connections: machineConnections(config),
  };
  writeFileSync(join(stage, 'manifest.json'), JSON.stringify(manifest));
  writeFileSync(join(stage, 'config.json'), configText);
  for (const f of manifest.files) writeFileSync(join(stage, f.staged), f.staged);
});

describe('restoreMachine refuses and writes nothing', () => {
  it('when a machine file of the same name exists already (it is not overwritten)', async () => {
    const ssh = join(home, '.ssh');
    mkdirSync(ssh);
    writeFileSync(join(ssh, 'tm1'), 'the user key');
    await expect(restoreMachine(stage, { HOME: home })).rejects.toThrow(
      /refusing to restore machine 'tm1': .*\.ssh\/tm1 already exists.*Nothing was changed or deleted/,
    );
    expect(tree(home)).toEqual(['.ssh', '.ssh/tm1']);
    expect(readFileSync(join(ssh, 'tm1'), 'utf8')).toBe('the user key');
    expect(tree(stage)).toHaveLength(6);
  });

  it('when a file the relocated config needs would be missing (a mount source outside the new HOME)', async () => {
    const config = JSON.parse(configText) as { Mounts: Array<{ Source: string }> };
    config.Mounts[0]!.Source = `${OLD}/not-in-the-new-home`;
    writeFileSync(join(stage, 'config.json'), JSON.stringify(config));
    await expect(restoreMachine(stage, { HOME: home })).rejects.toThrow(/not-in-the-new-home/);
    expect(tree(home)).toEqual([]);
  });

  it('when the staged manifest is damaged', async () => {
    writeFileSync(join(stage, 'manifest.json'), '{"version": 1}');
    await expect(restoreMachine(stage, { HOME: home })).rejects.toThrow(
      /the cached machine is unreadable: .*not a version 1 manifest/,
    );
    expect(tree(home)).toEqual([]);
  });

  it('when a staged file name climbs out of the staging dir (nothing outside is moved)', async () => {
    writeFileSync(join(caseDir, 'victim'), 'not the cache');
    const manifest = manifestOf();
    manifest.files[0]!.staged = '../victim';
    writeFileSync(join(stage, 'manifest.json'), JSON.stringify(manifest));
    await expect(restoreMachine(stage, { HOME: home })).rejects.toThrow(/refusing to restore machine 'tm1'/);
    expect(readFileSync(join(caseDir, 'victim'), 'utf8')).toBe('not the cache');
    expect(tree(home)).toEqual([]);
  });

  it('when a saved path climbs out of the old roots with .. (the public key would land outside the new HOME)', async () => {
    const manifest = manifestOf();
    manifest.files.find((f) => f.staged === 'identity.pub')!.original =
      `${OLD}/../../../../../..${caseDir}/escaped`;
    writeFileSync(join(stage, 'manifest.json'), JSON.stringify(manifest));
    await expect(restoreMachine(stage, { HOME: home })).rejects.toThrow(/refusing to restore machine 'tm1'/);
    expect(existsSync(join(caseDir, 'escaped'))).toBe(false);
    expect(tree(home)).toEqual([]);
  });

  it('when a staged file is a symlink (the disk would point at a file outside the machine)', async () => {
    writeFileSync(join(caseDir, 'precious'), 'a file the VM must never write');
    rmSync(join(stage, 'disk'));
    symlinkSync(join(caseDir, 'precious'), join(stage, 'disk'));
    await expect(restoreMachine(stage, { HOME: home })).rejects.toThrow(/disk.*not a regular file/);
    expect(tree(home)).toEqual([]);
    expect(readFileSync(join(caseDir, 'precious'), 'utf8')).toBe('a file the VM must never write');
  });

  it('when the staged config is a symlink (to a config elsewhere)', async () => {
    writeFileSync(join(caseDir, 'other.json'), configText);
    rmSync(join(stage, 'config.json'));
    symlinkSync(join(caseDir, 'other.json'), join(stage, 'config.json'));
    await expect(restoreMachine(stage, { HOME: home })).rejects.toThrow(/config\.json is not a regular file/);
    expect(tree(home)).toEqual([]);
  });

  it("when the config's disk is an existing file outside the new HOME, not the restored disk", async () => {
    const outside = join(caseDir, 'outside.qcow2.zst');
    writeFileSync(outside, 'someone else');
    const config = JSON.parse(configText) as { ImagePath: { Path: string } };
    config.ImagePath.Path = outside;
    writeFileSync(join(stage, 'config.json'), JSON.stringify(config));
    await expect(restoreMachine(stage, { HOME: home })).rejects.toThrow(new RegExp(`${outside}.*not one of`));
    expect(tree(home)).toEqual([]);
  });

  it('when the staged manifest is a FIFO with a silent writer (refused, not waited on)', async () => {
    const fifo = join(stage, 'manifest.json');
    rmSync(fifo);
    execFileSync('mkfifo', [fifo]);
    // A writer that never writes: a plain read of the FIFO waits for it forever. Closed after the test, so a
    // reader stuck on it (the old code) is let go.
    silentWriter = openSync(fifo, constants.O_RDWR);
    await expect(restoreMachine(stage, { HOME: home })).rejects.toThrow(
      /the cached machine is unreadable: .*not a regular file/,
    );
    expect(tree(home)).toEqual([]);
  }, 10_000);
});
