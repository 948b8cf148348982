import { describe, expect, it } from '@jest/globals';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from '../support/harness.js';
import {
  currentRoots,
  machineConnections,
  machineFiles,
  parseManifest,
  restorePlan,
  type MachineManifest,
} from '../../src/actions/preseed-podman-vm/machine-manifest.js';

const fixture = (name: string) =>
  JSON.parse(readFileSync(join(REPO_ROOT, '__tests__/fixtures/preseed-podman-vm', name), 'utf8')) as Record<
    string,
    unknown
  >;
const OLD = '/home/runner/work/_temp/ici-h1';
const CONFIG4 = `${OLD}/.config/containers/podman/machine/qemu/tm1.json`;
const oldRoots = {
  home: OLD,
  dataHome: `${OLD}/.local/share`,
  configHome: `${OLD}/.config`,
  runtimeDir: '/tmp/podman-run-1001',
};

describe('machineFiles', () => {
  it('podman 4: disk, ignition, ssh identity and its public key', () => {
    expect(machineFiles(fixture('podman4-qemu-machine.json'), CONFIG4)).toEqual([
      { staged: 'disk', original: `${OLD}/.local/share/containers/podman/machine/qemu/m.qcow2.zst` },
      { staged: 'ignition', original: `${OLD}/.config/containers/podman/machine/qemu/tm1.ign` },
      { staged: 'identity', original: `${OLD}/.ssh/tm1` },
      { staged: 'identity.pub', original: `${OLD}/.ssh/tm1.pub` },
    ]);
  });

  it('podman 5: the identity is under SSH, the ignition file beside the config (not named in it)', () => {
    const config = fixture('podman5-qemu-machine.json');
    const configPath = `${OLD}/.config/containers/podman/machine/qemu/${String(config.Name)}.json`;
    const files = machineFiles(config, configPath);
    expect(files.map((f) => f.staged)).toEqual(['disk', 'ignition', 'identity', 'identity.pub']);
    expect(files[1]!.original).toBe(
      `${OLD}/.config/containers/podman/machine/qemu/${String(config.Name)}.ign`,
    );
    expect(files[2]!.original).toBe(`${OLD}/.local/share/containers/podman/machine/machine`);
  });

  it('refuses a config without a disk', () => {
    const config = fixture('podman4-qemu-machine.json');
    delete config.ImagePath;
    expect(() => machineFiles(config, CONFIG4)).toThrow(/ImagePath/);
  });
});

describe('machineConnections', () => {
  it('podman 4: the user and root connections podman machine init adds', () => {
    expect(machineConnections(fixture('podman4-qemu-machine.json'))).toEqual([
      { name: 'tm1', uri: 'ssh://core@localhost:45823/run/user/1001/podman/podman.sock' },
      { name: 'tm1-root', uri: 'ssh://root@localhost:45823/run/podman/podman.sock' },
    ]);
  });

  it('podman 5: port and user under SSH, uid under HostUser', () => {
    const [user] = machineConnections(fixture('podman5-qemu-machine.json'));
    expect(user!.uri).toBe('ssh://core@localhost:38291/run/user/1001/podman/podman.sock');
  });
});

describe('currentRoots', () => {
  it('falls back the way podman does when XDG variables are unset or empty', () => {
    expect(currentRoots({ HOME: '/h', XDG_DATA_HOME: '' }, 7)).toEqual({
      home: '/h',
      dataHome: '/h/.local/share',
      configHome: '/h/.config',
      runtimeDir: '/tmp/podman-run-7',
    });
    expect(
      currentRoots({ HOME: '/h', XDG_DATA_HOME: '/d', XDG_CONFIG_HOME: '/c', XDG_RUNTIME_DIR: '/r' }, 7),
    ).toEqual({ home: '/h', dataHome: '/d', configHome: '/c', runtimeDir: '/r' });
  });
});

const manifest: MachineManifest = {
  version: 1,
  name: 'tm1',
  vmType: 'qemu',
  roots: oldRoots,
  configPath: CONFIG4,
  files: machineFiles(fixture('podman4-qemu-machine.json'), CONFIG4),
  connections: machineConnections(fixture('podman4-qemu-machine.json')),
};

describe('parseManifest', () => {
  it('round-trips a manifest', () => {
    expect(parseManifest(JSON.stringify(manifest))).toEqual(manifest);
  });

  it.each([
    ['another version', { ...manifest, version: 2 }],
    ['no roots', { ...manifest, roots: undefined }],
    ['a file without a path', { ...manifest, files: [{ staged: 'disk' }] }],
    ['no name', { ...manifest, name: '' }],
    // The name reaches log lines and podman's command line; connections are added with `podman system
    // connection add <name> <uri>`, so a cached manifest must not choose either freely.
    ['a name with a newline and a workflow command', { ...manifest, name: 'tm1\n::error::forged' }],
    ['a name that is an option', { ...manifest, name: '--default' }],
    [
      'a connection named as an option',
      { ...manifest, connections: [{ name: '--default', uri: 'ssh://core@localhost:1/run/p.sock' }] },
    ],
    [
      "a connection that is not the machine's",
      { ...manifest, connections: [{ name: 'production', uri: 'ssh://core@localhost:1/run/p.sock' }] },
    ],
    [
      'a connection to another host',
      { ...manifest, connections: [{ name: 'tm1', uri: 'ssh://root@build.example.com:22/run/p.sock' }] },
    ],
  ])('refuses %s', (_, value) => {
    expect(() => parseManifest(JSON.stringify(value))).toThrow(/not a version 1 manifest/);
  });
});

describe('restorePlan', () => {
  it('maps each file into the new HOME and separate XDG dirs (the longest old root wins)', () => {
    const plan = restorePlan(manifest, {
      home: '/w/h2',
      dataHome: '/w/data2',
      configHome: '/w/cfg2',
      runtimeDir: '/tmp/podman-run-1002',
    });
    expect(plan).toEqual({
      configTarget: '/w/cfg2/containers/podman/machine/qemu/tm1.json',
      files: [
        { staged: 'disk', target: '/w/data2/containers/podman/machine/qemu/m.qcow2.zst' },
        { staged: 'ignition', target: '/w/cfg2/containers/podman/machine/qemu/tm1.ign' },
        { staged: 'identity', target: '/w/h2/.ssh/tm1' },
        { staged: 'identity.pub', target: '/w/h2/.ssh/tm1.pub' },
      ],
    });
  });

  it('refuses a file saved outside every old root when the roots changed', () => {
    const odd = { ...manifest, files: [{ staged: 'disk', original: '/srv/disks/m.qcow2' }] };
    expect(() => restorePlan(odd, { home: '/w/h2', dataHome: '/w/d', configHome: '/w/c' })).toThrow(
      /\/srv\/disks\/m.qcow2 is outside HOME/,
    );
  });

  it('keeps paths when the roots are the same', () => {
    const plan = restorePlan(manifest, oldRoots);
    expect(plan.files.map((f) => f.target)).toEqual(manifest.files.map((f) => f.original));
  });
});
