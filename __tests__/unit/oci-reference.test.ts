import { describe, expect, it } from '@jest/globals';
import {
  formatReference,
  isValidTag,
  parseReference,
  parseRepository,
  registryApiHost,
} from '../../src/core/oci/reference.js';

const DIGEST = `sha256:${'a'.repeat(64)}`;

describe('parseReference', () => {
  it.each([
    ['busybox', { registry: 'docker.io', repository: 'library/busybox' }],
    ['busybox:1.36', { registry: 'docker.io', repository: 'library/busybox', tag: '1.36' }],
    ['user/app', { registry: 'docker.io', repository: 'user/app' }],
    ['index.docker.io/user/app:v1', { registry: 'docker.io', repository: 'user/app', tag: 'v1' }],
    ['quay.io/podman/machine-os:5.3', { registry: 'quay.io', repository: 'podman/machine-os', tag: '5.3' }],
    ['localhost/app', { registry: 'localhost', repository: 'app' }],
    ['127.0.0.1:5000/a/b/c:tag', { registry: '127.0.0.1:5000', repository: 'a/b/c', tag: 'tag' }],
    [`ghcr.io/o/r@${DIGEST}`, { registry: 'ghcr.io', repository: 'o/r', digest: DIGEST }],
    [`ghcr.io/o/r:t@${DIGEST}`, { registry: 'ghcr.io', repository: 'o/r', tag: 't', digest: DIGEST }],
    ['Registry.Example.COM:443/x', { registry: 'registry.example.com:443', repository: 'x' }],
  ])('%s', (text, expected) => {
    expect(parseReference(text)).toEqual(expected);
  });

  it.each([
    ['', /empty/],
    ['docker://quay.io/a', /URL scheme/],
    [
      'quay.io/UPPER/case',
      /invalid repository path 'UPPER\/case': repository names must be lower-case \(write 'upper\/case'\)/,
    ],
    ['quay.io/a:bad tag', /invalid tag/],
    ['quay.io/a:-leading', /invalid tag/],
    ['quay.io/a@sha256:short', /invalid digest/],
    ['quay.io/', /no repository path/],
    ['quay.io/a//b', /invalid repository path component ''/],
  ])('rejects %j', (text, message) => {
    expect(() => parseReference(text)).toThrow(message);
  });

  it('round-trips through formatReference', () => {
    const text = `127.0.0.1:5000/a/b:t@${DIGEST}`;
    expect(formatReference(parseReference(text))).toBe(text);
  });
});

describe('parseRepository and tags', () => {
  it('accepts host/path and refuses a tag', () => {
    expect(parseRepository('ghcr.io/o/r')).toEqual({ registry: 'ghcr.io', repository: 'o/r' });
    expect(() => parseRepository('ghcr.io/o/r:1')).toThrow(/give only the repository/);
  });

  it('validates tags with the distribution grammar', () => {
    expect(isValidTag('1.2.3')).toBe(true);
    expect(isValidTag('sha-abc_DEF')).toBe(true);
    expect(isValidTag('x'.repeat(128))).toBe(true);
    expect(isValidTag('x'.repeat(129))).toBe(false);
    expect(isValidTag('.hidden')).toBe(false);
    expect(isValidTag('a/b')).toBe(false);
  });

  it('reaches Docker Hub at its API host', () => {
    expect(registryApiHost('docker.io')).toBe('registry-1.docker.io');
    expect(registryApiHost('ghcr.io')).toBe('ghcr.io');
  });
});
