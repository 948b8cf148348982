import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT, runAction, secretOnlyAfterMask, type RunResult } from '../support/harness.js';
import { generateLayout, type GeneratedLayout } from '../support/oci-layout.js';
import { startProxy, type CountingProxy, type RequestRecord } from '../support/proxy.js';
import { startRegistry, type RegistryService } from '../support/registry.js';

const TAGS = ['1.2.3', '1.2', '1', 'latest', 'sha-0a1b2c3', 'stable', 'v1.2.3', 'release', 'prod', 'edge'];

function skopeo(args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('skopeo', args, { encoding: 'utf8', timeout: 60_000 }, (error, stdout, stderr) =>
      resolve({ status: error ? 1 : 0, stdout, stderr }),
    );
  });
}

/** The digest skopeo sees for a ref, read straight from the registry (not through a relay). */
async function remoteDigest(ref: string, creds?: string): Promise<string> {
  const args = ['inspect', '--no-tags', '--tls-verify=false', ...(creds ? ['--creds', creds] : [])];
  const out = await skopeo([...args, `docker://${ref}`]);
  if (out.status !== 0) throw new Error(`skopeo inspect ${ref}: ${out.stderr}`);
  return (JSON.parse(out.stdout) as { Digest: string }).Digest;
}

function authDirOf(result: RunResult): string | undefined {
  const raw = result.main.state['push-multi-tag'];
  return raw ? (JSON.parse(raw) as { authDir?: string }).authDir : undefined;
}

describe('push-multi-tag (dist, runner harness, real docker-registry)', () => {
  let work: string;
  let layout: GeneratedLayout;
  let regA: RegistryService;
  let regB: RegistryService;
  let proxyA: CountingProxy;
  let proxyB: CountingProxy;
  /** The registry of the runs that meet nothing but 503s (none of the other tests count what it holds). */
  let regDown: RegistryService;
  /** Its token server answers 503 while this is set. */
  let tokensFailing = true;
  let tokenDown: RegistryService;
  let uploadStartDown: CountingProxy;
  let mountDown: CountingProxy;
  /** The runs that retry 503s until the budget is spent: each waits out the client's backoff (~6 s). */
  let uploadStartRun: Promise<RunResult>;
  let mountRun: Promise<RunResult>;
  let tokenRun: Promise<RunResult>;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'ici-push-'));
    layout = generateLayout(join(work, 'layout'), { layers: [600_000, 300_000, 150_000] });
    [regA, regB, regDown] = await Promise.all([startRegistry(), startRegistry(), startRegistry()]);
    [proxyA, proxyB, uploadStartDown, mountDown, tokenDown] = await Promise.all([
      startProxy({ target: regA.host }),
      startProxy({ target: regB.host }),
      startProxy({
        target: regDown.host,
        fault: ({ kind }) => (kind === 'upload-start' ? { status: 503 } : undefined),
      }),
      startProxy({
        target: regDown.host,
        // budget/one is stored first (its blobs uploaded); budget/two, which mounts from it, meets the 503s.
        fault: ({ kind, repository }) =>
          kind === 'mount' || (kind === 'upload-start' && repository === 'budget/two')
            ? { status: 503 }
            : undefined,
      }),
      startRegistry({
        auth: 'token',
        tokenHook: (_req, res) => {
          if (!tokensFailing) return false;
          res.writeHead(503, { 'content-type': 'text/plain' }).end('down');
          return true;
        },
      }),
    ]);
    // Those runs are mostly idle time: they start now, run beside the other tests, and their tests await them.
    uploadStartRun = runAction({
      action: 'push-multi-tag',
      inputs: {
        ...pushInputs(),
        repositories: `${uploadStartDown.host}/down/app`,
        'insecure-registries': uploadStartDown.host,
      },
    });
    mountRun = runAction({
      action: 'push-multi-tag',
      inputs: {
        ...pushInputs(),
        repositories: `${mountDown.host}/budget/one\n${mountDown.host}/budget/two`,
        'insecure-registries': mountDown.host,
      },
    });
    tokenRun = runAction({
      action: 'push-multi-tag',
      inputs: {
        source: layout.transportRef,
        repositories: `${tokenDown.host}/tok/one`,
        tags: 'v1',
        username: tokenDown.username!,
        password: tokenDown.password!,
        'tls-verify': 'false',
      },
    });
    for (const run of [uploadStartRun, mountRun, tokenRun]) run.catch(() => undefined);
  });
  afterAll(async () => {
    await Promise.allSettled([uploadStartRun, mountRun, tokenRun]);
    tokensFailing = false;
    await Promise.all(
      [proxyA, proxyB, uploadStartDown, mountDown, regA, regB, regDown, tokenDown].map((s) => s?.stop()),
    );
    rmSync(work, { recursive: true, force: true });
  });

  const pushInputs = (extra: Record<string, string> = {}) => ({
    source: layout.transportRef,
    repositories: `${proxyA.host}/rel/one\n${proxyA.host}/rel/two\n${proxyB.host}/rel/one`,
    tags: TAGS.join(', '),
    'insecure-registries': `${proxyA.host}, ${proxyB.host}`,
    ...extra,
  });

  it('pushes 10 tags to 2 repositories and a second registry, each blob sent once per registry', async () => {
    const digestFile = join(work, 'digest.txt');
    const r = await runAction({
      action: 'push-multi-tag',
      inputs: pushInputs({ 'digest-file': digestFile }),
    });
    expect(r.errors).toEqual([]);
    expect(r.main.exitCode).toBe(0);
    expect(r.outputs.digest).toBe(layout.digest);
    expect(readFileSync(digestFile, 'utf8').trim()).toBe(layout.digest);
    const refs = JSON.parse(r.outputs['pushed-refs']!) as string[];
    expect(refs).toHaveLength(30);
    expect(refs).toContain(`${proxyB.host}/rel/one:latest@${layout.digest}`);
    const blobs = layout.blobs.length;
    expect(r.outputs['blobs-uploaded']).toBe(String(2 * blobs));
    expect(r.outputs['blobs-mounted']).toBe(String(blobs));
    expect(r.outputs['blobs-skipped']).toBe('0');
    expect(r.outputs['bytes-uploaded']).toBe(String(2 * layout.blobBytes));
    expect(Number(r.outputs['duration-ms'])).toBeGreaterThan(0);

    // What crossed the wire: each blob uploaded once per registry; the second repository only mounted.
    const uploadsTo = (proxy: CountingProxy, repo: string) =>
      proxy.count('upload-put', (rec) => rec.repository === repo && rec.status === 201);
    expect(uploadsTo(proxyA, 'rel/one')).toBe(blobs);
    expect(uploadsTo(proxyA, 'rel/two')).toBe(0);
    expect(proxyA.count('mount', (rec) => rec.repository === 'rel/two' && rec.status === 201)).toBe(blobs);
    expect(uploadsTo(proxyB, 'rel/one')).toBe(blobs);
    for (const proxy of [proxyA, proxyB]) {
      const blobBytesUp = proxy.records
        .filter((rec) => rec.kind === 'upload-put' || rec.kind === 'upload-chunk')
        .reduce((n, rec) => n + rec.bytesUp, 0);
      expect(blobBytesUp).toBe(layout.blobBytes);
    }

    const checks = [regA.host, regB.host].flatMap((host) =>
      (host === regA.host ? ['rel/one', 'rel/two'] : ['rel/one']).flatMap((repo) =>
        TAGS.map((tag) => remoteDigest(`${host}/${repo}:${tag}`)),
      ),
    );
    expect(new Set(await Promise.all(checks))).toEqual(new Set([layout.digest]));
    const pulled = join(work, 'pulled');
    const copy = await skopeo([
      'copy',
      '--src-tls-verify=false',
      `docker://${regB.host}/rel/one:1.2`,
      `oci:${pulled}:x`,
    ]);
    expect(copy.stderr).toBe('');
    const index = JSON.parse(readFileSync(join(pulled, 'index.json'), 'utf8')) as {
      manifests: { digest: string }[];
    };
    expect(index.manifests[0]!.digest).toBe(layout.digest);
    expect(r.main.summary).toContain(`| ${proxyA.host}/rel/two:${TAGS.join(', ')} |`);
    expect(r.post?.exitCode).toBe(0);
  });

  it('pushes the same image again without sending a blob byte', async () => {
    proxyA.reset();
    proxyB.reset();
    const r = await runAction({ action: 'push-multi-tag', inputs: pushInputs() });
    expect(r.main.exitCode).toBe(0);
    expect(r.outputs['bytes-uploaded']).toBe('0');
    expect(r.outputs['blobs-uploaded']).toBe('0');
    expect(r.outputs['blobs-skipped']).toBe(String(3 * layout.blobs.length));
    for (const proxy of [proxyA, proxyB]) {
      expect(proxy.count('upload-put') + proxy.count('upload-chunk') + proxy.count('upload-start')).toBe(0);
    }
  });

  it('uploads in chunks when chunk-size is set', async () => {
    proxyA.reset();
    const r = await runAction({
      action: 'push-multi-tag',
      inputs: {
        ...pushInputs(),
        repositories: `${proxyA.host}/chunked/app`,
        tags: 'c1',
        'chunk-size': '256KiB',
      },
    });
    expect(r.main.exitCode).toBe(0);
    expect(proxyA.count('upload-chunk')).toBeGreaterThan(layout.blobs.length);
    expect(await remoteDigest(`${regA.host}/chunked/app:c1`)).toBe(layout.digest);
  });

  it('pushes a multi-arch index whole, children before the index', async () => {
    const multi = generateLayout(join(work, 'multi'), {
      layers: [100_000, 50_000],
      platforms: [
        { os: 'linux', architecture: 'amd64' },
        { os: 'linux', architecture: 'arm64' },
      ],
    });
    proxyA.reset();
    const r = await runAction({
      action: 'push-multi-tag',
      inputs: {
        ...pushInputs(),
        source: multi.transportRef,
        repositories: `${proxyA.host}/multi/app`,
        tags: 'a,b',
      },
    });
    expect(r.main.exitCode).toBe(0);
    expect(r.outputs.digest).toBe(multi.digest);
    const puts = proxyA.records
      .filter((rec) => rec.kind === 'manifest-put')
      .map((rec) => rec.path.split('/').pop());
    const indexAt = puts.indexOf(multi.digest);
    for (const child of multi.children) expect(puts.indexOf(child.digest)).toBeLessThan(indexAt);
    const raw = await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${regA.host}/multi/app:b`]);
    expect((JSON.parse(raw.stdout) as { manifests: unknown[] }).manifests).toHaveLength(2);
    expect(await remoteDigest(`${regA.host}/multi/app:a`)).toBe(multi.digest);
  });

  it('a registry whose manifest HEADs carry no Docker-Content-Digest (a SHOULD: Nexus, registry.redhat.io leave it out): what exists is read to know its digest', async () => {
    const other = generateLayout(join(work, 'other'), { layers: [1_000] });
    for (const [from, tag] of [
      [other, 'a'],
      [layout, 'c'],
    ] as const) {
      const copy = await skopeo([
        'copy',
        '--dest-tls-verify=false',
        from.transportRef,
        `docker://${regA.host}/nodigest/app:${tag}`,
      ]);
      expect(copy.stderr).toBe('');
    }
    const relay = await startProxy({
      target: regA.host,
      mapResponseHeaders: (kind, headers) => {
        if (kind !== 'manifest-head') return headers;
        const { ['docker-content-digest']: _, ...rest } = headers;
        return rest;
      },
    });
    try {
      const r = await runAction({
        action: 'push-multi-tag',
        inputs: {
          source: layout.transportRef,
          repositories: `${relay.host}/nodigest/app`,
          tags: 'a, b, c',
          'insecure-registries': relay.host,
        },
      });
      expect(r.errors).toEqual([]);
      expect(r.main.exitCode).toBe(0);
      const short = (digest: string) => `${digest.slice(0, 'sha256:'.length + 12)}…`;
      expect(r.log).toContain(`a: ${short(other.digest)} → ${short(layout.digest)}`);
      expect(r.log).toContain(`b: (new) → ${short(layout.digest)}`);
      expect(r.log).toContain(`c: ${short(layout.digest)} (unchanged)`);
      // What exists is read (the manifest by digest too) and nothing else; the manifest by digest is not stored
      // again (the one PUT to it is the `?tag=` probe).
      const gets = relay.records.filter((rec) => rec.kind === 'manifest-get').map((rec) => rec.path);
      expect(gets.sort()).toEqual([
        '/v2/nodigest/app/manifests/a',
        '/v2/nodigest/app/manifests/c',
        `/v2/nodigest/app/manifests/${layout.digest}`,
      ]);
      const puts = relay.records
        .filter((rec) => rec.kind === 'manifest-put' && !rec.query.has('tag'))
        .map((rec) => rec.path);
      expect(puts.sort()).toEqual(['/v2/nodigest/app/manifests/a', '/v2/nodigest/app/manifests/b']);
      for (const tag of ['a', 'b', 'c'])
        expect(await remoteDigest(`${regA.host}/nodigest/app:${tag}`)).toBe(layout.digest);
    } finally {
      await relay.stop();
    }
  });

  it('asks a registry for the multi-tag PUT beside the per-tag PUTs, and every tag is confirmed (test double: a relay adding OCI-Tag, which docker-registry 2.8 lacks)', async () => {
    const double = await startProxy({ target: regA.host, multiTag: true });
    try {
      const r = await runAction({
        action: 'push-multi-tag',
        inputs: {
          ...pushInputs(),
          repositories: `${double.host}/multitag/one\n${double.host}/multitag/two`,
          'insecure-registries': double.host,
        },
      });
      expect(r.main.exitCode).toBe(0);
      // Per repository: the manifest by digest in phase 1; in phase 2, while the registry's answer to `?tag=`
      // is not known, one PUT with every tag beside one PUT per tag (so tagging costs one round trip).
      const tagged = (rec: RequestRecord) => rec.query.has('tag');
      expect(double.count('manifest-put', (rec) => !tagged(rec) && rec.path.includes('sha256:'))).toBe(2);
      expect(double.count('manifest-put', (rec) => rec.query.getAll('tag').length === TAGS.length)).toBe(2);
      expect(double.count('manifest-put', (rec) => !tagged(rec) && !rec.path.includes('sha256:'))).toBe(
        2 * TAGS.length,
      );
      for (const tag of TAGS)
        expect(await remoteDigest(`${regA.host}/multitag/two:${tag}`)).toBe(layout.digest);
    } finally {
      await double.stop();
    }
  });

  it('survives 429 with Retry-After, 503s and a connection dropped mid-upload, with correct digests', async () => {
    const faulty = await startProxy({
      target: regB.host,
      fault: ({ kind, index }) => {
        if (kind === 'blob-head' && index === 0) return { status: 429, retryAfterSeconds: 1 };
        if (kind === 'upload-start' && index === 1) return { status: 503 };
        if (kind === 'upload-put' && index === 0) return { drop: 'mid-body' };
        if (kind === 'manifest-put' && index === 0) return { status: 503 };
        return undefined;
      },
    });
    try {
      const r = await runAction({
        action: 'push-multi-tag',
        inputs: {
          ...pushInputs(),
          repositories: `${faulty.host}/faults/app`,
          'insecure-registries': faulty.host,
        },
      });
      expect(r.errors).toEqual([]);
      expect(r.main.exitCode).toBe(0);
      const injected = faulty.records.filter((rec) => rec.fault).map((rec) => rec.kind);
      expect(injected.sort()).toEqual(['blob-head', 'manifest-put', 'upload-put', 'upload-start']);
      expect(faulty.count('upload-put', (rec) => rec.status === 201)).toBe(layout.blobs.length);
      for (const tag of TAGS)
        expect(await remoteDigest(`${regB.host}/faults/app:${tag}`)).toBe(layout.digest);
      // One retry per injected fault, counted in the log line and in the summary.
      expect(r.log).toMatch(new RegExp(`${faulty.host}: \\d+ requests, 4 retried`));
      // The wait the registry set is told as it starts.
      expect(r.log).toMatch(
        /HEAD blob sha256:\w+ in faults\/app: HTTP 429 .*; waiting 1 s as the registry asked \(Retry-After\)\./,
      );
      expect(r.main.summary).toContain('| Registry | Requests | Retries | Blob bytes sent |');
      expect(r.main.summary).toMatch(new RegExp(`\\| ${faulty.host} \\| \\d+ \\| 4 \\|`));
    } finally {
      await faulty.stop();
    }
  });

  it('survives a connection dropped mid-chunk and a 503 on a chunk: the upload goes on in the same session', async () => {
    const faulty = await startProxy({
      target: regB.host,
      fault: ({ kind, index }) => {
        if (kind === 'upload-chunk' && index === 1) return { drop: 'mid-body' };
        if (kind === 'upload-chunk' && index === 4) return { status: 503 };
        return undefined;
      },
    });
    try {
      const r = await runAction({
        action: 'push-multi-tag',
        inputs: {
          ...pushInputs(),
          repositories: `${faulty.host}/faults/chunked`,
          tags: 'c',
          'chunk-size': '200KiB',
          concurrency: '1',
          'insecure-registries': faulty.host,
        },
      });
      expect(r.errors).toEqual([]);
      expect(faulty.records.filter((rec) => rec.fault).map((rec) => rec.kind)).toEqual([
        'upload-chunk',
        'upload-chunk',
      ]);
      expect(r.outputs['bytes-uploaded']).toBe(String(layout.blobBytes));
      expect(await remoteDigest(`${regB.host}/faults/chunked:c`)).toBe(layout.digest);
      // No session was given up: each blob opened one; only the two failed chunks crossed twice.
      expect(faulty.count('upload-start')).toBe(layout.blobs.length);
      const sent = faulty.records
        .filter((rec) => rec.kind === 'upload-chunk' || rec.kind === 'upload-put')
        .reduce((n, rec) => n + rec.bytesUp, 0);
      expect(sent).toBeLessThanOrEqual(layout.blobBytes + 2 * 200 * 1024);
    } finally {
      await faulty.stop();
    }
  });

  it('a registry that always answers 503 to an upload start gets at most 6 POSTs per blob (one retry budget)', async () => {
    const r = await uploadStartRun;
    const down = uploadStartDown;
    expect(r.main.exitCode).toBe(1);
    expect(r.errors.join('\n')).toContain('start upload to down/app: HTTP 503');
    const blobs = layout.blobs.length;
    expect(down.count('upload-start')).toBeGreaterThanOrEqual(6);
    expect(down.count('upload-start')).toBeLessThanOrEqual(6 * blobs);
    // The per-registry line is logged on failure too, with the retries counted.
    const line = new RegExp(`${down.host}: \\d+ requests, (\\d+) retried`).exec(r.log);
    expect(Number(line?.[1])).toBe((down.count('upload-start') / 6) * 5);
    expect(r.post?.exitCode).toBe(0);
  });

  it('a mount then an upload of one blob share one retry budget: a registry that always answers 503 gets 6 tries per blob', async () => {
    const r = await mountRun;
    const down = mountDown;
    expect(r.main.exitCode).toBe(1);
    const blobs = layout.blobs.length;
    const tries = down.count('mount') + down.count('upload-start', (rec) => rec.repository === 'budget/two');
    // Six tries per blob at most (the old client gave the mount six and the upload six more).
    expect(tries).toBeGreaterThanOrEqual(6);
    expect(tries).toBeLessThanOrEqual(6 * blobs);
    expect(r.errors.join('\n')).toContain('into budget/two: HTTP 503');
  });

  it('runs the same way from the CLI: image-ci push-multi-tag --source ... --repositories ... --tags ...', async () => {
    const cli = await new Promise<{ code: number; stdout: string }>((resolve) => {
      execFile(
        process.execPath,
        [
          join(REPO_ROOT, 'dist/cli.js'),
          'push-multi-tag',
          '--source',
          layout.transportRef,
          '--repositories',
          `${regA.host}/cli/app`,
          '--tags',
          'x,y',
          '--insecure-registries',
          regA.host,
        ],
        { encoding: 'utf8', timeout: 60_000 },
        (error, stdout) =>
          resolve({ code: error ? Number((error as { code?: number }).code ?? 1) : 0, stdout }),
      );
    });
    expect(cli.code).toBe(0);
    expect(cli.stdout).toContain(`digest=${layout.digest}`);
    expect(cli.stdout).toContain(`blobs-uploaded=${layout.blobs.length}`);
    expect(await remoteDigest(`${regA.host}/cli/app:y`)).toBe(layout.digest);
  });

  it.each([
    [{ tags: 'ok, -bad' }, "Input 'tags': '-bad' is not a valid tag"],
    [{ source: 'oci:/nonexistent/ici-layout' }, "Input 'source': /nonexistent/ici-layout does not exist."],
    [{ password: 'secret-pw' }, "Input 'password': was given without `username`"],
  ])(
    'refuses bad input %j with exit code 2 (every message is unit-tested in push-inputs.test.ts)',
    async (inputs, message) => {
      const r = await runAction({ action: 'push-multi-tag', inputs: { ...pushInputs(), ...inputs } });
      expect(r.main.exitCode).toBe(2);
      expect(r.errors.join('\n')).toContain(message);
    },
  );

  describe('with a login', () => {
    it.each(['htpasswd', 'token'] as const)(
      '%s: pushes with good credentials; masks them; writes no credentials file',
      async (auth) => {
        const registry = await startRegistry({ auth });
        try {
          const r = await runAction({
            action: 'push-multi-tag',
            inputs: {
              source: layout.transportRef,
              repositories: `${registry.host}/auth/one, ${registry.host}/auth/two`,
              tags: 'v1, latest',
              username: registry.username!,
              password: registry.password!,
              'tls-verify': 'false',
            },
          });
          expect(r.errors).toEqual([]);
          expect(r.main.exitCode).toBe(0);
          expect(r.outputs['blobs-mounted']).toBe(String(layout.blobs.length));
          expect(r.masks[0]).toBe(registry.password);
          expect(secretOnlyAfterMask(r.main, registry.password!)).toBe(true);
          // The Basic header's value is the password too, in base64: an echoed header must not show it.
          const basic = Buffer.from(`${registry.username}:${registry.password}`).toString('base64');
          expect(r.masks).toContain(basic);
          expect(secretOnlyAfterMask(r.main, basic)).toBe(true);
          expect(r.post!.lines.some((l) => l.text.includes(registry.password!))).toBe(false);
          // Only a child tool (skopeo for a docker:// source) gets credentials in a file; a layout source needs none.
          expect(authDirOf(r)).toBeUndefined();
          const creds = `${registry.username}:${registry.password}`;
          expect(await remoteDigest(`${registry.host}/auth/two:latest`, creds)).toBe(layout.digest);
          if (auth === 'token') {
            const scopes = registry.tokenRequests.map((t) => t.scopes.sort().join(' '));
            expect(scopes).toContain('repository:auth/one:pull,push');
            expect(scopes).toContain('repository:auth/one:pull repository:auth/two:pull,push');
            // Every token the action received was masked before use.
            expect(r.masks.length).toBeGreaterThan(1);
          }
        } finally {
          await registry.stop();
        }
      },
    );

    it('a mount refused 401 with insufficient_scope (Harbor, when the token may not pull the source): the first refusal holds for every blob, which are uploaded without asking again; the push succeeds', async () => {
      const registry = await startRegistry({ auth: 'token' });
      const harbor = await startProxy({
        target: registry.host,
        fault: ({ kind }) =>
          kind === 'mount'
            ? {
                status: 401,
                headers: {
                  'www-authenticate': `${registry.challenge!},scope="repository:auth/one:pull repository:auth/two:pull,push",error="insufficient_scope"`,
                },
              }
            : undefined,
      });
      // Six layers one at a time (and the config beside them in the small blobs' lane).
      const many = generateLayout(join(work, 'many-layers'), { layers: Array(6).fill(300_000) as number[] });
      try {
        const r = await runAction({
          action: 'push-multi-tag',
          inputs: {
            source: many.transportRef,
            repositories: `${harbor.host}/auth/one, ${harbor.host}/auth/two`,
            tags: 'v1',
            username: registry.username!,
            password: registry.password!,
            'insecure-registries': harbor.host,
            concurrency: '1',
          },
        });
        expect(r.errors).toEqual([]);
        expect(r.main.exitCode).toBe(0);
        expect(r.outputs['blobs-mounted']).toBe('0');
        expect(r.log).toContain(
          `${harbor.host}/auth/two: phase 1 done: ${many.blobs.length} uploaded (1.7 MiB), 0 mounted, 0 already there (mounting from auth/one was refused: uploaded instead).`,
        );
        const creds = `${registry.username}:${registry.password}`;
        expect(await remoteDigest(`${registry.host}/auth/two:v1`, creds)).toBe(many.digest);
        // The first layer's mount and the config's (the token asked again once each), then none: 14 before.
        expect(harbor.count('mount')).toBeLessThanOrEqual(4);
        expect(
          harbor.count('upload-start', (rec) => rec.repository === 'auth/two' && rec.status === 202),
        ).toBe(many.blobs.length);
      } finally {
        await harbor.stop();
        await registry.stop();
      }
    });

    it('a mount refused 401 for an expired token (invalid_token) is asked again with a fresh token: no refusal is remembered, every blob is mounted', async () => {
      const registry = await startRegistry({ auth: 'token' });
      const expiring = await startProxy({
        target: registry.host,
        fault: ({ kind, index }) =>
          kind === 'mount' && index === 0
            ? {
                status: 401,
                headers: {
                  'www-authenticate': `${registry.challenge!},error="invalid_token",error_description="token expired"`,
                },
              }
            : undefined,
      });
      const many = generateLayout(join(work, 'expiring-layers'), {
        layers: Array(3).fill(100_000) as number[],
      });
      try {
        const r = await runAction({
          action: 'push-multi-tag',
          inputs: {
            source: many.transportRef,
            repositories: `${expiring.host}/auth/one, ${expiring.host}/auth/two`,
            tags: 'v1',
            username: registry.username!,
            password: registry.password!,
            'insecure-registries': expiring.host,
            concurrency: '1',
          },
        });
        expect(r.errors).toEqual([]);
        expect(r.outputs['blobs-mounted']).toBe(String(many.blobs.length));
        expect(r.log).not.toContain('was refused');
        // The expired token's mount once more with the fresh one, then one mount per blob.
        expect(expiring.count('mount')).toBe(many.blobs.length + 1);
        expect(expiring.count('upload-start', (rec) => rec.repository === 'auth/two')).toBe(0);
      } finally {
        await expiring.stop();
        await registry.stop();
      }
    });

    it('a token server that always answers 503 gets at most 6 token requests in all, named in the error', async () => {
      const r = await tokenRun;
      expect(r.main.exitCode).toBe(1);
      // The parallel blob HEADs all wait on one fetch, which has the one budget of six tries.
      expect(tokenDown.tokenRequests).toHaveLength(6);
      expect(r.errors.join('\n')).toMatch(/get a token from http:\/\/127\.0\.0\.1:\d+\/token: HTTP 503/);
    });

    it('reads credentials from auth-file and leaves that file untouched', async () => {
      const registry = await startRegistry({ auth: 'htpasswd' });
      try {
        const authFile = join(work, 'auth.json');
        const auth = Buffer.from(`${registry.username}:${registry.password}`).toString('base64');
        const content = JSON.stringify({ auths: { [registry.host]: { auth } } });
        writeFileSync(authFile, content);
        const r = await runAction({
          action: 'push-multi-tag',
          inputs: {
            source: layout.transportRef,
            repositories: `${registry.host}/file/app`,
            tags: 'v1',
            'auth-file': authFile,
            'insecure-registries': registry.host,
          },
        });
        expect(r.errors).toEqual([]);
        expect(r.outputs['blobs-uploaded']).toBe(String(layout.blobs.length));
        expect(readFileSync(authFile, 'utf8')).toBe(content);
        expect(r.masks).toContain(registry.password);
        expect(secretOnlyAfterMask(r.main, registry.password!)).toBe(true);
      } finally {
        await registry.stop();
      }
    });

    it.each(['htpasswd', 'token'] as const)(
      '%s: fails clearly with bad credentials; writes no credentials file',
      async (auth) => {
        const registry = await startRegistry({ auth });
        try {
          const r = await runAction({
            action: 'push-multi-tag',
            inputs: {
              source: layout.transportRef,
              repositories: `${registry.host}/auth/one`,
              tags: 'v1',
              username: registry.username!,
              password: 'wrong-password-123',
              'tls-verify': 'false',
            },
          });
          expect(r.main.exitCode).toBe(1);
          expect(r.errors.join('\n')).toMatch(/refused .*user 'tester'/);
          expect(r.log).not.toMatch(/wrong-password-123(?!$)/m);
          expect(secretOnlyAfterMask(r.main, 'wrong-password-123')).toBe(true);
          expect(authDirOf(r)).toBeUndefined();
          expect(r.post?.exitCode).toBe(0);
        } finally {
          await registry.stop();
        }
      },
    );
  });
});
