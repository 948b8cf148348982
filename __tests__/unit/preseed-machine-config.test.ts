import { afterAll, describe, expect, it } from '@jest/globals';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { REPO_ROOT } from '../support/harness.js';
import {
  MachineRelocationError,
  pathRewriter,
  relocateMachineConfig,
  type MachineRoots,
} from '../../src/actions/preseed-podman-vm/machine-config.js';

const fixture = (name: string) =>
  readFileSync(join(REPO_ROOT, '__tests__/fixtures/preseed-podman-vm', name), 'utf8');
const tmp = mkdtempSync(join(tmpdir(), 'preseed-mc-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function roots(home: string, runtimeDir: string): MachineRoots {
  return { home, dataHome: join(home, '.local/share'), configHome: join(home, '.config'), runtimeDir };
}

function touch(path: string): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, 'x');
}

/** Every string value in a JSON document. */
function strings(value: unknown): string[] {
  if (typeof value === 'string') return [value];
  if (Array.isArray(value)) return value.flatMap(strings);
  if (value && typeof value === 'object') return Object.values(value).flatMap(strings);
  return [];
}

describe('pathRewriter', () => {
  const rw = pathRewriter(roots('/home/a', '/run/user/1'), roots('/w/h2', '/run/user/2'));

  it('rewrites whole and embedded paths at path boundaries only', () => {
    expect(rw('/home/a/.ssh/m')).toBe('/w/h2/.ssh/m');
    expect(rw('local,path=/home/a,mount_tag=vol0')).toBe('local,path=/w/h2,mount_tag=vol0');
    expect(rw('/home/a:/home/a')).toBe('/w/h2:/w/h2');
    expect(rw('unix:/run/user/1/podman/qmp.sock,server=on')).toBe(
      'unix:/run/user/2/podman/qmp.sock,server=on',
    );
    expect(rw('/home/ab/x')).toBe('/home/ab/x');
    expect(rw('/opt/podman/bin/vfkit')).toBe('/opt/podman/bin/vfkit');
  });

  it('maps a data dir outside HOME by the longest matching root', () => {
    const from = { home: '/home/a', dataHome: '/home/a/data', configHome: '/home/a/.config' };
    const to = { home: '/n', dataHome: '/elsewhere/data', configHome: '/n/.config' };
    expect(pathRewriter(from, to)('/home/a/data/containers/x')).toBe('/elsewhere/data/containers/x');
  });
});

describe('relocateMachineConfig on real-shaped machine JSON', () => {
  const cases = [
    {
      file: 'podman4-qemu-machine.json',
      home: '/home/runner/work/_temp/ici-h1',
      run: '/tmp/podman-run-1001',
    },
    { file: 'podman5-qemu-machine.json', home: '/home/runner/work/_temp/ici-h1', run: '/run/user/1001' },
    {
      file: 'podman5-applehv-machine.json',
      home: '/Users/runner/work/_temp/ici-h1',
      run: '/var/folders/x1/T',
    },
  ];

  for (const c of cases) {
    it(`moves ${c.file} to a new HOME and verifies the files it needs`, () => {
      const text = fixture(c.file);
      const newHome = join(tmp, c.file.replace('.json', ''));
      const to = roots(newHome, join(tmp, 'run'));
      const preview = pathRewriter(roots(c.home, c.run), to);
      const original = JSON.parse(text) as Record<string, unknown>;
      const needed = [
        (original.ImagePath as { Path: string }).Path,
        ...(c.file.startsWith('podman4')
          ? [
              (original.ConfigPath as { Path: string }).Path,
              (original.IgnitionFilePath as { Path: string }).Path,
              original.IdentityPath as string,
            ]
          : [(original.SSH as { IdentityPath: string }).IdentityPath]),
      ].map(preview);
      for (const f of needed) touch(f);

      const moved = relocateMachineConfig(text, roots(c.home, c.run), to);
      expect(moved.files).toEqual(expect.arrayContaining(needed));
      const all = strings(JSON.parse(moved.text));
      expect(all.filter((s) => s.includes(c.home) || s.includes(c.run))).toEqual([]);
      expect(all.some((s) => s.includes(newHome))).toBe(true);
      if (c.file.startsWith('podman4')) {
        const cmd = (JSON.parse(moved.text) as { CmdLine: string[] }).CmdLine;
        expect(cmd).toContain(`if=virtio,file=${needed[0]}`);
        expect(cmd).toContain(`local,path=${newHome},mount_tag=vol0,security_model=mapped-xattr`);
      }
      // Unrelated values survive untouched.
      expect(JSON.parse(moved.text).Name).toBe(original.Name);
    });
  }

  it('refuses, naming the missing files, and leaves everything in place', () => {
    const text = fixture('podman4-qemu-machine.json');
    const newHome = join(tmp, 'missing');
    touch(join(newHome, '.ssh/tm1'));
    let error: unknown;
    try {
      relocateMachineConfig(
        text,
        roots('/home/runner/work/_temp/ici-h1', '/tmp/podman-run-1001'),
        roots(newHome, '/r'),
      );
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(MachineRelocationError);
    const missing = (error as MachineRelocationError).missing;
    expect(missing).toContain(join(newHome, '.local/share/containers/podman/machine/qemu/m.qcow2.zst'));
    expect(missing).not.toContain(join(newHome, '.ssh/tm1'));
    expect((error as Error).message).toMatch(/Nothing was changed or deleted/);
    expect(readFileSync(join(newHome, '.ssh/tm1'), 'utf8')).toBe('x');
  });

  it('refuses what is not a podman machine config', () => {
    expect(() => relocateMachineConfig('{"Name":"x"}', roots('/a', '/r'), roots('/b', '/r'))).toThrow(
      /neither podman 4 nor 5/,
    );
    expect(() => relocateMachineConfig('not json', roots('/a', '/r'), roots('/b', '/r'))).toThrow(/not JSON/);
  });
});
