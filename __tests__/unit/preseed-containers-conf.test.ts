import { afterAll, describe, expect, it } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  planContainersConf,
  setMachineImage,
  tomlString,
} from '../../src/actions/preseed-podman-vm/containers-conf.js';

const tmp = mkdtempSync(join(tmpdir(), 'preseed-conf-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('setMachineImage', () => {
  it('writes a [machine] table into an empty file', () => {
    expect(setMachineImage('', '/t/ici-pvm/machine-os.qcow2.zst')).toBe(
      '[machine]\nimage = "/t/ici-pvm/machine-os.qcow2.zst"\n',
    );
  });

  it('replaces an existing image and keeps every other line, comment and table', () => {
    const conf = [
      '# user settings',
      '[containers]',
      'image = "not-this-one"',
      '[machine]',
      'cpus = 4',
      '  image = "testing"  # old stream',
      '[network]',
      'default_network = "podman"',
      '',
    ].join('\n');
    const out = setMachineImage(conf, '/img.qcow2.zst');
    expect(out).toBe(
      [
        '# user settings',
        '[containers]',
        'image = "not-this-one"',
        '[machine]',
        'cpus = 4',
        'image = "/img.qcow2.zst"',
        '[network]',
        'default_network = "podman"',
        '',
      ].join('\n'),
    );
  });

  it('adds image under an existing [machine] table that lacks it, not under a [machine.x] subtable', () => {
    const out = setMachineImage('[machine]\nmemory = 4096\n[machine.volumes]\n', '/i');
    expect(out).toBe('[machine]\nimage = "/i"\nmemory = 4096\n[machine.volumes]\n');
  });

  it('escapes Windows paths and quotes as TOML basic strings', () => {
    expect(tomlString('C:\\Users\\a "b"')).toBe('"C:\\\\Users\\\\a \\"b\\""');
  });
});

describe('planContainersConf', () => {
  it('writes only the image for CONTAINERS_CONF_OVERRIDE (podman >= 4.4)', async () => {
    const plan = await planContainersConf('/i.qcow2.zst', 'CONTAINERS_CONF_OVERRIDE', join(tmp, 'own.conf'), {
      HOME: tmp,
    });
    expect(plan).toEqual({
      variable: 'CONTAINERS_CONF_OVERRIDE',
      text: '[machine]\nimage = "/i.qcow2.zst"\n',
    });
  });

  // Before: the plan was the image alone, and podman reads one override file: the earlier one was dropped.
  it('carries an override file an earlier step set into ours, and our own on a second step', async () => {
    const earlier = join(tmp, 'earlier-override.conf');
    writeFileSync(earlier, '[machine]\ncpus = 3\nimage = "/theirs"\n[engine]\nenv = ["A=1"]\n');
    const own = join(tmp, 'own-override.conf');
    const plan = await planContainersConf('/i', 'CONTAINERS_CONF_OVERRIDE', own, {
      HOME: tmp,
      CONTAINERS_CONF_OVERRIDE: earlier,
    });
    expect(plan).toEqual({
      variable: 'CONTAINERS_CONF_OVERRIDE',
      base: earlier,
      text: '[machine]\ncpus = 3\nimage = "/i"\n[engine]\nenv = ["A=1"]\n',
    });
    writeFileSync(own, plan.text);
    const again = await planContainersConf('/j', 'CONTAINERS_CONF_OVERRIDE', own, {
      HOME: tmp,
      CONTAINERS_CONF_OVERRIDE: own,
    });
    expect(again.text).toBe('[machine]\ncpus = 3\nimage = "/j"\n[engine]\nenv = ["A=1"]\n');
  });

  it('refuses an override that is no regular file, naming the variable, instead of blocking on it', async () => {
    const fifo = join(tmp, 'override.fifo');
    execFileSync('mkfifo', [fifo]);
    await expect(
      planContainersConf('/i', 'CONTAINERS_CONF_OVERRIDE', join(tmp, 'own.conf'), {
        HOME: tmp,
        CONTAINERS_CONF_OVERRIDE: fifo,
      }),
    ).rejects.toThrow(
      /^Environment variable CONTAINERS_CONF_OVERRIDE: names .*override\.fifo, which cannot be/,
    );
  });

  it("carries the user's containers.conf into the CONTAINERS_CONF file (podman 4.3 replaces the whole conf)", async () => {
    const home = join(tmp, 'home');
    mkdirSync(join(home, '.config', 'containers'), { recursive: true });
    const user = join(home, '.config', 'containers', 'containers.conf');
    writeFileSync(user, '[engine]\nruntime = "crun"\n');
    const plan = await planContainersConf('/i.qcow2.zst', 'CONTAINERS_CONF', join(tmp, 'own.conf'), {
      HOME: home,
    });
    expect(plan.variable).toBe('CONTAINERS_CONF');
    expect(plan.base).toBe(user);
    expect(plan.text).toBe('[engine]\nruntime = "crun"\n\n[machine]\nimage = "/i.qcow2.zst"\n');
  });

  it('prefers a CONTAINERS_CONF already set, but never nests its own earlier file', async () => {
    const earlier = join(tmp, 'earlier.conf');
    writeFileSync(earlier, '[engine]\nruntime = "runc"\n');
    const own = join(tmp, 'own.conf');
    writeFileSync(own, '[machine]\nimage = "/old"\n');
    const env = { HOME: join(tmp, 'nohome'), CONTAINERS_CONF: earlier };
    expect((await planContainersConf('/i', 'CONTAINERS_CONF', own, env)).base).toBe(earlier);
    const again = await planContainersConf('/i', 'CONTAINERS_CONF', own, { ...env, CONTAINERS_CONF: own });
    expect(again.base).not.toBe(own);
  });
});
