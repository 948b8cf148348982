import { describe, expect, it } from '@jest/globals';
import { MapInputSource } from '../../src/core/inputs.js';
import { readInputs } from '../../src/actions/push-multi-tag/inputs.js';

const base = {
  source: 'oci:/tmp/layout:v1',
  repositories: 'ghcr.io/org/app\nquay.io/org/app, 127.0.0.1:5000/a/b',
  tags: '1.2.3, 1.2\n1\nlatest',
};
const read = (extra: Record<string, string | undefined> = {}) =>
  readInputs(new MapInputSource({ ...base, ...extra }));

describe('push-multi-tag readInputs', () => {
  it('parses every input once into typed values', () => {
    const inputs = read({
      username: 'bot',
      password: 'pw',
      'tls-verify': 'false',
      'insecure-registries': '127.0.0.1:5000',
      concurrency: '8',
      'chunk-size': '16MiB',
      compression: 'zstd',
      'digest-file': '/tmp/d',
    });
    expect(inputs).toEqual({
      source: { transport: 'oci', location: '/tmp/layout', ref: 'v1' },
      repositories: [
        { registry: 'ghcr.io', repository: 'org/app' },
        { registry: 'quay.io', repository: 'org/app' },
        { registry: '127.0.0.1:5000', repository: 'a/b' },
      ],
      tags: ['1.2.3', '1.2', '1', 'latest'],
      username: 'bot',
      password: 'pw',
      authFile: undefined,
      tlsVerify: false,
      insecureRegistries: ['127.0.0.1:5000'],
      concurrency: 8,
      chunkSize: 16 * 1024 * 1024,
      compression: 'zstd',
      digestFile: '/tmp/d',
      atomic: true,
      referrers: true,
      dryRun: false,
    });
  });

  it('reads insecure-registries entries as registries: URL forms, trailing slashes and Docker Hub aliases', () => {
    const entries =
      'http://127.0.0.1:5000, https://127.0.0.1:5001/, 127.0.0.1:5002/, INDEX.docker.io, registry-1.docker.io';
    expect(read({ 'insecure-registries': entries }).insecureRegistries).toEqual([
      '127.0.0.1:5000',
      '127.0.0.1:5001',
      '127.0.0.1:5002',
      'docker.io',
      'docker.io',
    ]);
    // Forms docker and podman take elsewhere that would match nothing here: refused, not silently unused.
    for (const [entry, what] of [
      ['10.0.0.0/8', 'is a CIDR range'],
      ['fd00::/8', 'is a CIDR range'],
      ['*.example.com', 'is a wildcard'],
      ['http://user@registry.example:5000', 'carries a user name'],
    ]) {
      expect(() => read({ 'insecure-registries': entry })).toThrow(
        `Input 'insecure-registries': '${entry}' ${what}, which this input does not take; list each registry as host[:port].`,
      );
    }
    expect(() => read({ 'insecure-registries': '127.0.0.1:5000/team' })).toThrow(
      "Input 'insecure-registries': '127.0.0.1:5000/team' names a path; list registries as host[:port] (the setting covers a whole registry).",
    );
  });

  it('reads atomic, referrers and dry-run strictly', () => {
    expect(read({ atomic: 'false', referrers: 'no', 'dry-run': 'yes' })).toMatchObject({
      atomic: false,
      referrers: false,
      dryRun: true,
    });
  });

  it('takes a bare name as a containers-storage image and drops duplicate tags', () => {
    const inputs = read({ source: 'localhost/app:dev', tags: 'a, a, b' });
    expect(inputs.source).toEqual({ transport: 'containers-storage', location: 'localhost/app:dev' });
    expect(inputs.tags).toEqual(['a', 'b']);
    expect(inputs.concurrency).toBe(4);
    expect(inputs.chunkSize).toBe(0);
  });

  it.each([
    [{ source: undefined }, "Input 'source': is required but was not given."],
    [
      { source: 'dir:/tmp/x' },
      "Input 'source': the dir: transport is known but not supported as a push source",
    ],
    [{ source: 'docker:quay.io/a' }, "Input 'source': 'docker:quay.io/a': write docker://<reference>."],
    [{ source: 'Not A Name' }, "Input 'source':"],
    [{ repositories: ' ' }, "Input 'repositories': is required but was not given."],
    [{ repositories: 'app' }, "Input 'repositories': 'app' names no registry host"],
    [{ repositories: 'org/app' }, "Input 'repositories': 'org/app' names no registry host"],
    [
      { repositories: 'ghcr.io/org/app:1' },
      "Input 'repositories': 'ghcr.io/org/app:1' names a tag or digest",
    ],
    [
      { repositories: 'ghcr.io/Org/app' },
      "Input 'repositories': 'ghcr.io/Org/app' has an invalid repository path",
    ],
    [{ repositories: 'ghcr.io/a/b, ghcr.io/a/b' }, "Input 'repositories': 'ghcr.io/a/b' is listed twice."],
    [{ tags: '' }, "Input 'tags': is required but was not given"],
    [{ tags: 'ok, bad tag' }, "Input 'tags': 'bad tag' is not a valid tag"],
    [{ tags: '.dot' }, "Input 'tags': '.dot' is not a valid tag"],
    [{ tags: 'x'.repeat(129) }, "Input 'tags': 'xxxxxxxx"],
    [{ password: 'pw' }, "Input 'password': was given without `username`; set both."],
    [{ username: 'bot' }, "Input 'username': was given without `password`; set both."],
    [{ 'tls-verify': 'maybe' }, "Input 'tls-verify': expected true or false"],
    [{ concurrency: '0' }, "Input 'concurrency': must be at least 1"],
    [{ 'chunk-size': 'big' }, "Input 'chunk-size': expected a size like 5MiB"],
    [{ compression: 'xz' }, "Input 'compression': must be one of gzip, zstd; got 'xz'."],
    [{ atomic: 'sometimes' }, "Input 'atomic': expected true or false"],
    [{ 'dry-run': 'perhaps' }, "Input 'dry-run': expected true or false"],
  ])('refuses %j', (extra, message) => {
    expect(() => read(extra)).toThrow(message);
  });
});
