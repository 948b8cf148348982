import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateLayout, type GeneratedLayout } from '../support/oci-layout.js';
import { startRegistry, type RegistryAuth, type RegistryService } from '../support/registry.js';

// Asynchronous on purpose: the token server runs in this process and must keep answering while skopeo waits.
function skopeo(args: string[], input?: string): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile('skopeo', args, { encoding: 'utf8', timeout: 60_000 }, (error, stdout, stderr) => {
      resolve({ status: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

function credsArgs(flag: string, registry: RegistryService, password = registry.password): string[] {
  return registry.username ? [flag, `${registry.username}:${password}`] : [];
}

describe('test registry services (real docker-registry)', () => {
  let work: string;
  let layout: GeneratedLayout;

  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), 'ici-svc-'));
    layout = generateLayout(join(work, 'layout'), { layers: [200_000, 100_000, 50_000] });
  });
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it('the layout generator writes a layout skopeo reads, with the digest it reports', async () => {
    const out = await skopeo(['inspect', '--raw', layout.transportRef]);
    expect(out.status).toBe(0);
    const manifest = JSON.parse(out.stdout) as { layers: unknown[] };
    expect(manifest.layers).toHaveLength(3);
    const manifestPath = join(work, 'manifest.json');
    writeFileSync(manifestPath, out.stdout);
    const digest = await skopeo(['manifest-digest', manifestPath]);
    expect(digest.stdout.trim()).toBe(layout.digest);
  });

  it.each<RegistryAuth>(['none', 'htpasswd', 'token'])(
    'a %s registry takes a push and serves the same image back',
    async (auth) => {
      const registry = await startRegistry({ auth });
      try {
        const ref = `docker://${registry.host}/svc/test:v1`;
        const push = await skopeo([
          'copy',
          '--dest-tls-verify=false',
          ...credsArgs('--dest-creds', registry),
          layout.transportRef,
          ref,
        ]);
        expect(push.stderr).toBe('');
        expect(push.status).toBe(0);
        const inspect = await skopeo([
          'inspect',
          '--tls-verify=false',
          ...credsArgs('--creds', registry),
          ref,
        ]);
        expect(inspect.status).toBe(0);
        expect((JSON.parse(inspect.stdout) as { Digest: string }).Digest).toBe(layout.digest);
        const back = join(work, `back-${auth}`);
        const pull = await skopeo([
          'copy',
          '--src-tls-verify=false',
          ...credsArgs('--src-creds', registry),
          ref,
          `oci:${back}:x`,
        ]);
        expect(pull.status).toBe(0);
        const index = JSON.parse(readFileSync(join(back, 'index.json'), 'utf8')) as {
          manifests: { digest: string }[];
        };
        expect(index.manifests[0]!.digest).toBe(layout.digest);
        if (auth !== 'none') {
          const anonymous = await skopeo(['inspect', '--tls-verify=false', ref]);
          expect(anonymous.status).not.toBe(0);
          const wrong = await skopeo([
            'inspect',
            '--tls-verify=false',
            ...credsArgs('--creds', registry, 'wrong'),
            ref,
          ]);
          expect(wrong.status).not.toBe(0);
        }
        if (auth === 'token') {
          expect(
            registry.tokenRequests.some((r) =>
              r.scopes.some((s) => s.endsWith(':push,pull') || s.endsWith(':pull,push')),
            ),
          ).toBe(true);
        }
      } finally {
        await registry.stop();
      }
    },
  );
});
