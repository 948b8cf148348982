import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RegistryClient } from '../../src/core/oci/client.js';
import { RegistryError } from '../../src/core/oci/errors.js';
import { generateLayout, type GeneratedLayout } from '../support/oci-layout.js';
import { startRegistry, type RegistryAuth, type RegistryService } from '../support/registry.js';

function skopeo(args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('skopeo', args, { encoding: 'utf8', timeout: 60_000 }, (error, stdout, stderr) =>
      resolve({ status: error ? 1 : 0, stdout, stderr }),
    );
  });
}

function clientFor(registry: RegistryService, tokens: string[] = [], password = registry.password) {
  return new RegistryClient({
    registry: registry.host,
    insecure: true,
    credentials: registry.username ? { username: registry.username, password: password! } : undefined,
    onToken: (t) => tokens.push(t),
    timeoutMs: 10_000,
    retryBaseDelayMs: 10,
  });
}

function blobPath(layout: GeneratedLayout, digest: string): string {
  return join(layout.dir, 'blobs', 'sha256', digest.slice(7));
}

describe('RegistryClient against docker-registry', () => {
  let work: string;
  let layout: GeneratedLayout;

  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), 'ici-client-'));
    layout = generateLayout(join(work, 'layout'), { layers: [300_000, 120_000] });
  });
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  describe.each<RegistryAuth>(['none', 'htpasswd', 'token'])('with %s auth', (auth) => {
    let registry: RegistryService;
    beforeAll(async () => {
      registry = await startRegistry({ auth });
    });
    afterAll(() => registry.stop());

    it('pulls what skopeo pushed: HEAD/GET manifest, HEAD blob, verified download', async () => {
      const creds = registry.username ? ['--dest-creds', `${registry.username}:${registry.password}`] : [];
      const push = await skopeo([
        'copy',
        '--dest-tls-verify=false',
        ...creds,
        layout.transportRef,
        `docker://${registry.host}/pull/test:v1`,
      ]);
      expect(push.stderr).toBe('');
      const tokens: string[] = [];
      const client = clientFor(registry, tokens);
      const head = await client.headManifest('pull/test', 'v1');
      expect(head).toEqual({ digest: layout.digest, mediaType: layout.mediaType, size: expect.any(Number) });
      expect(await client.headManifest('pull/test', 'missing')).toBeUndefined();
      const manifest = await client.getManifest('pull/test', layout.digest);
      expect(manifest.bytes).toEqual(readFileSync(blobPath(layout, layout.digest)));
      const layer = layout.blobs[1]!;
      expect(await client.headBlob('pull/test', layer.digest)).toEqual({ size: layer.size });
      expect(await client.headBlob('pull/test', `sha256:${'0'.repeat(64)}`)).toBeUndefined();
      const dest = join(work, `${auth}-layer`);
      let progress = 0;
      expect(
        await client.downloadBlob('pull/test', layer.digest, dest, { onProgress: (n) => (progress = n) }),
      ).toEqual({
        size: layer.size,
      });
      expect(readFileSync(dest)).toEqual(readFileSync(blobPath(layout, layer.digest)));
      expect(progress).toBe(layer.size);
      expect(tokens.length > 0).toBe(auth === 'token');
    });

    it('pushes blobs (monolithic and chunked), mounts, and PUTs the manifest under a tag', async () => {
      const client = clientFor(registry);
      const [config, big, small] = layout.blobs;
      await client.uploadBlob('push/one', { ...config!, path: blobPath(layout, config!.digest) });
      await client.uploadBlob(
        'push/one',
        { ...big!, path: blobPath(layout, big!.digest) },
        { chunkSize: 100_000 },
      );
      await client.uploadBlob('push/one', { ...small!, path: blobPath(layout, small!.digest) });
      const bytes = readFileSync(blobPath(layout, layout.digest));
      const put = await client.putManifest('push/one', 'v1', bytes, layout.mediaType);
      expect(put.digest).toBe(layout.digest);
      expect(put.confirmedTags).toEqual([]);
      for (const blob of layout.blobs) {
        expect(await client.mountBlob('push/two', blob.digest, 'push/one')).toEqual({ mounted: true });
      }
      await client.putManifest('push/two', layout.digest, bytes, layout.mediaType);
      expect(client.stats.bytesUploaded).toBe(layout.blobBytes);
      const creds = registry.username ? ['--creds', `${registry.username}:${registry.password}`] : [];
      for (const ref of [`push/one:v1`, `push/two@${layout.digest}`]) {
        const inspect = await skopeo([
          'inspect',
          '--no-tags',
          '--tls-verify=false',
          ...creds,
          `docker://${registry.host}/${ref}`,
        ]);
        expect(inspect.stderr).toBe('');
        expect((JSON.parse(inspect.stdout) as { Digest: string }).Digest).toBe(layout.digest);
      }
    });

    it('refuses a blob whose content does not match its digest', async () => {
      const client = clientFor(registry);
      const wrong = {
        digest: `sha256:${'1'.repeat(64)}`,
        size: layout.blobs[0]!.size,
        path: blobPath(layout, layout.blobs[0]!.digest),
      };
      await expect(client.uploadBlob('push/bad', wrong)).rejects.toThrow(RegistryError);
      const dest = join(work, `${auth}-bad`);
      await expect(client.downloadBlob('push/one', wrong.digest, dest)).rejects.toThrow(/HTTP 404/);
      expect(existsSync(dest)).toBe(false);
      expect(readdirSync(work).filter((f) => f.endsWith('.part'))).toEqual([]);
    });

    if (auth !== 'none') {
      it('reports refused credentials with the user name and no password', async () => {
        const client = clientFor(registry, [], 'not-the-password');
        const error = await client.headManifest('pull/test', 'v1').catch((e: unknown) => e);
        expect(error).toBeInstanceOf(RegistryError);
        expect(String(error)).toContain(`user '${registry.username}'`);
        expect(String(error)).not.toContain('not-the-password');
      });
    }
  });
});
