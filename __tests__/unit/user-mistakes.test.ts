/**
 * What a new user runs into, tried as they would: each mistake they can fix is an InputError (exit 2) whose
 * message names the setting and gives one hint; what the world did stays an ActionError (exit 1).
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli } from '../../src/cli/cli.js';
import { InputError, MapInputSource } from '../../src/core/inputs.js';
import { parseReference } from '../../src/core/oci/reference.js';
import { classifyImage } from '../../src/actions/preseed-podman-vm/image-source.js';
import { defaultVmType } from '../../src/actions/preseed-podman-vm/podman-host.js';
import { readInputs as readPreseedInputs } from '../../src/actions/preseed-podman-vm/inputs.js';
import { readInputs as readRemoteBuildInputs } from '../../src/actions/remote-build-env/inputs.js';
import { REPO_ROOT } from '../support/harness.js';
import { inputError } from '../support/input-error.js';

const dir = mkdtempSync(join(tmpdir(), 'ici-mistakes-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function capture() {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { out: (l: string) => out.push(l), err: (l: string) => err.push(l) }, out, err };
}

describe('image-ci itself', () => {
  it.each(['--version', '-V'])('%s prints the version from package.json and exits 0', async (flag) => {
    const { version } = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as {
      version: string;
    };
    const c = capture();
    expect(await runCli([flag], c.io)).toBe(0);
    expect(c.out).toEqual([`image-ci ${version}`]);
    expect(c.err).toEqual([]);
  });
});

describe('prune-simplestreams path', () => {
  const prune = async (path: string) => {
    const c = capture();
    const code = await runCli(['prune-simplestreams', '--path', path], c.io);
    return { code, errors: c.err.filter((l) => l.startsWith('error:')) };
  };

  it('a path that does not exist is an input mistake (exit 2), said once', async () => {
    const missing = join(dir, 'no-such-repo');
    expect(await prune(missing)).toEqual({
      code: 2,
      errors: [
        `error: Input 'path': ${missing} does not exist; give the directory that holds streams/v1/ of the repository.`,
      ],
    });
  });

  it('an https:// URL gets one hint: prune works on a local directory', async () => {
    const { code, errors } = await prune('https://images.example.org/');
    expect(code).toBe(2);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(/^error: Input 'path': 'https:\/\/images\.example\.org\/' is a URL/);
    expect(errors[0]).not.toMatch(/no such file|ENOENT|not a directory/);
  });

  it('a file is named as a file', async () => {
    const file = join(dir, 'images.json');
    writeFileSync(file, '{}');
    expect(await prune(file)).toEqual({
      code: 2,
      errors: [
        `error: Input 'path': ${file} is a file, not a directory; give the repository's root directory.`,
      ],
    });
  });
});

describe('preseed-podman-vm', () => {
  it('--image naming a directory says so, not "does not exist"', () => {
    const e = inputError(() => classifyImage(dir));
    expect(e.input).toBe('image');
    expect(e.message).toBe(
      `Input 'image': ${dir} is a directory; give an image file (e.g. a .qcow2.zst), a docker:// reference or an https:// URL.`,
    );
  });

  it('an upper-case repository in a docker:// reference is an input mistake, an upper-case host is fine', () => {
    const e = inputError(() => classifyImage('docker://Quay.io/Podman/machine-os:5.3'));
    expect(e.input).toBe('image');
    expect(e.message).toMatch(/repository names must be lower-case/);
    expect(classifyImage('docker://Quay.io/podman/machine-os:5.3')).toMatchObject({ kind: 'registry' });
    expect(parseReference('Quay.io/podman/machine-os:5.3').registry).toBe('quay.io');
  });

  it('the same reference through the CLI exits 2 before anything is fetched', async () => {
    const c = capture();
    const code = await runCli(
      [
        'preseed-podman-vm',
        '--image',
        'docker://Quay.io/Podman/machine-os:5.3',
        '--no-cache',
        '--no-set-default',
      ],
      c.io,
    );
    expect(code).toBe(2);
    expect(c.err.filter((l) => l.startsWith('error:'))).toEqual([
      expect.stringMatching(/^error: Input 'image': .*repository names must be lower-case/),
    ]);
  });

  it('CONTAINERS_MACHINE_PROVIDER is reported as the environment variable it is', () => {
    const version = { major: 5, minor: 4, patch: 2, text: '5.4.2' };
    let error: unknown;
    try {
      defaultVmType(version, 'linux', { CONTAINERS_MACHINE_PROVIDER: 'vbox' });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(InputError);
    expect((error as Error).message).toBe(
      "Environment variable CONTAINERS_MACHINE_PROVIDER: 'vbox' is not a podman machine provider " +
        '(qemu, applehv, libkrun, hyperv, wsl); unset it or set the input `vm-type`.',
    );
  });

  it('a cache-key-prefix the cache service would refuse is an input mistake, found before any work', () => {
    for (const prefix of ['a,b', 'x'.repeat(500)]) {
      expect(
        inputError(() => readPreseedInputs(new MapInputSource({ 'cache-key-prefix': prefix }))).input,
      ).toBe('cache-key-prefix');
    }
  });
});

describe('remote-build-env cache-key', () => {
  const read = (key: string) => readRemoteBuildInputs(new MapInputSource({ 'cache-key': key }));

  it('is held to the cache service limit of 512 characters for the whole key, suffix included', () => {
    // `<cache-key>-<os>-<arch>-<16 hex>`: 480 + `-Linux-X64-` + 16 fits, 490 + ... does not.
    expect(read('k'.repeat(480))).toMatchObject({ cacheKey: 'k'.repeat(480) });
    expect(inputError(() => read('k'.repeat(490))).message).toMatch(/512 characters/);
    expect(inputError(() => read('a,b')).input).toBe('cache-key');
  });
});
