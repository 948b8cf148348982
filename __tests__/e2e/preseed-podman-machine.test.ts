/**
 * preseed-podman-vm and `podman machine`: the command lines the action runs (through a `podman` TEST DOUBLE,
 * since no VM can boot here), input mistakes, and a REAL `podman machine init` run offline by a non-root user
 * with a throw-away HOME and the containers.conf the action exported.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFileSync, spawnSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
  existsSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { runAction } from '../support/harness.js';
import { writeTinyMachineImage } from '../support/machine-os.js';

const ACTION = 'preseed-podman-vm';
let work: string;
let image: string;

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'ici-pvm-machine-'));
  chmodSync(work, 0o755);
  image = writeTinyMachineImage(work);
});

afterAll(() => rmSync(work, { recursive: true, force: true }));

/** A `podman` test double: records every call, answers --version with PODMAN_DOUBLE_VERSION. */
function podmanDouble(version: string): { bin: string; calls: () => string[] } {
  const dir = mkdtempSync(join(work, 'double-'));
  const log = join(dir, 'calls');
  writeFileSync(
    join(dir, 'podman'),
    `#!/bin/sh\nprintf '%s\\n' "$*" >> '${log}'\n[ "$1" = --version ] && echo 'podman version ${version}'\nexit 0\n`,
    { mode: 0o755 },
  );
  return { bin: dir, calls: () => (existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n') : []) };
}

describe('podman machine command lines (podman TEST DOUBLE: no VM can run here)', () => {
  const inputs = {
    init: 'true',
    'machine-name': 'ci-vm',
    cpus: '2',
    memory: '2048',
    'disk-size': '20',
    rootful: 'true',
  };

  it('podman 5: init --image with resources, CONTAINERS_CONF_OVERRIDE, post stops and removes the machine', async () => {
    const double = podmanDouble('5.2.1');
    const r = await runAction({
      action: ACTION,
      inputs: { ...inputs, image },
      env: { PATH: `${double.bin}:${process.env.PATH}` },
    });
    expect(r.main.exitCode).toBe(0);
    expect(r.post?.exitCode).toBe(0);
    expect(double.calls()).toEqual([
      '--version',
      `machine init --image ${image} --cpus 2 --memory 2048 --disk-size 20 --rootful ci-vm`,
      'machine stop ci-vm',
      'machine rm --force ci-vm',
    ]);
    expect(r.outputs['machine-name']).toBe('ci-vm');
    expect(r.outputs['image-path']).toBe(image);
    const conf = r.exportedEnv.CONTAINERS_CONF_OVERRIDE!;
    expect(readFileSync(conf, 'utf8')).toBe(`[machine]\nimage = "${image}"\n`);
  });

  it('podman 4: init --image-path, start when asked, no cleanup when cleanup is false', async () => {
    const double = podmanDouble('4.9.4');
    const r = await runAction({
      action: ACTION,
      inputs: { image, init: 'true', start: 'true', cleanup: 'false', 'machine-name': 'm4' },
      env: { PATH: `${double.bin}:${process.env.PATH}` },
    });
    expect(r.main.exitCode).toBe(0);
    expect(double.calls()).toEqual([
      '--version',
      `machine init --image-path ${image} m4`,
      'machine start m4',
    ]);
    expect(r.exportedEnv.CONTAINERS_CONF_OVERRIDE).toBeDefined();
  });
});

describe('input mistakes fail with exit 2 and name the input', () => {
  const cases: Array<[string, Record<string, string>, RegExp]> = [
    ['unknown vm-type', { 'vm-type': 'virtualbox' }, /Input 'vm-type': must be one of/],
    ['start without init', { start: 'true' }, /Input 'start': needs `init: true`/],
    [
      'a path that does not exist',
      { image: '/nonexistent/disk.qcow2.zst' },
      /Input 'image': the file \/nonexistent/,
    ],
    [
      'arch mismatch with init',
      { arch: process.arch === 'x64' ? 'aarch64' : 'x86_64', init: 'true' },
      /Input 'arch'/,
    ],
  ];
  for (const [name, inputs, message] of cases) {
    it(name, async () => {
      const r = await runAction({ action: ACTION, inputs: { image, ...inputs } });
      expect(r.main.exitCode).toBe(2);
      expect(r.errors.join('\n')).toMatch(message);
    });
  }
});

describe('real podman machine init, offline, non-root, throw-away HOME', () => {
  const user = 'icipvm';

  beforeAll(() => {
    if (process.getuid?.() !== 0) throw new Error('this test creates a user (useradd) and needs root');
    if (spawnSync('id', [user]).status !== 0) execFileSync('useradd', ['-m', user]);
  });

  it('uses the image named by the containers.conf the action exported', async () => {
    const r = await runAction({ action: ACTION, inputs: { image } });
    expect(r.main.exitCode).toBe(0);
    const conf = r.exportedEnv.CONTAINERS_CONF ?? r.exportedEnv.CONTAINERS_CONF_OVERRIDE;
    expect(conf).toBeDefined();
    const variable = r.exportedEnv.CONTAINERS_CONF ? 'CONTAINERS_CONF' : 'CONTAINERS_CONF_OVERRIDE';

    // The runner user owns the file in a real job; podman 4 writes its connections into CONTAINERS_CONF.
    const uid = Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }));
    const gid = Number(execFileSync('id', ['-g', user], { encoding: 'utf8' }));
    const home = join(work, 'throwaway-home');
    mkdirSync(home);
    chownSync(home, uid, gid);
    const ownConf = join(work, 'user-containers.conf');
    writeFileSync(ownConf, readFileSync(conf!));
    chownSync(ownConf, uid, gid);

    const env = `HOME=${home} ${variable}=${ownConf} XDG_RUNTIME_DIR= XDG_DATA_HOME= XDG_CONFIG_HOME=`;
    const sh = (cmd: string) =>
      spawnSync('su', [user, '-s', '/bin/sh', '-c', `cd ${home} && env ${env} timeout 60 ${cmd}`], {
        encoding: 'utf8',
        timeout: 90_000,
      });
    // Facts: podman 4.3 here prints `Error: exit status 1` after creating the machine, so the exit code is not
    // the evidence; the machine files and `podman machine ls` are.
    const init = sh('podman machine init ci-offline');
    const dataDir = join(home, '.local/share/containers/podman/machine/qemu');
    const machineJson = join(home, '.config/containers/podman/machine/qemu/ci-offline.json');
    expect({ init: init.stdout + init.stderr, json: existsSync(machineJson) }).toMatchObject({ json: true });
    const config = JSON.parse(readFileSync(machineJson, 'utf8')) as { ImagePath: { Path: string } };
    expect(config.ImagePath.Path.startsWith(dataDir)).toBe(true);
    expect(basename(config.ImagePath.Path)).toBe(basename(image));
    expect(existsSync(config.ImagePath.Path)).toBe(true);
    // The disk podman made is the qcow2 we seeded (decompressed), not something downloaded.
    const info = execFileSync('qemu-img', ['info', '--output=json', config.ImagePath.Path], {
      encoding: 'utf8',
    });
    expect(JSON.parse(info)).toMatchObject({ format: 'qcow2' });
    const ls = sh('podman machine ls --format json');
    expect(ls.stdout).toContain('"Name": "ci-offline');
  });
});
