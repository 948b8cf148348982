/**
 * The registry client on slow links and in front of slow registries, against a real docker-registry behind the
 * fault relay: a registry that verifies and moves a blob (or commits a manifest) for a long time after the last
 * byte, one that never answers a bodyless POST or answers a mount late, a slow uplink, a download that trickles. Timeouts are small here
 * (0.3–1 s) so that nothing waits for a real minute; undici's header timer fires up to 1 s late, which the
 * delays below allow for.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { digestFile, digestOf } from '../../src/core/oci/digest.js';
import type { BlobFile } from '../../src/core/oci/upload.js';
import { generateLayout, type GeneratedLayout } from '../support/oci-layout.js';
import { startProxy, type CountingProxy, type ProxyOptions } from '../support/proxy.js';
import { startRegistry, type RegistryService } from '../support/registry.js';
import { testClient } from '../support/oci-client.js';

let work: string;
let registry: RegistryService;
let layout: GeneratedLayout;
const relays: CountingProxy[] = [];

/** A blob file of `size` random bytes. */
function randomBlob(name: string, size: number): BlobFile {
  const bytes = randomBytes(size);
  const path = join(work, name);
  writeFileSync(path, bytes);
  return { path, size, digest: digestOf(bytes) };
}

const layoutBlob = (digest: string): BlobFile => {
  const path = join(layout.dir, 'blobs', 'sha256', digest.slice(7));
  return { path, digest, size: readFileSync(path).length };
};

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'ici-slow-'));
  layout = generateLayout(join(work, 'layout'), { layers: [20_000] });
  registry = await startRegistry();
  // What the slow commits below refer to, stored directly: a manifest's blobs, a mount's source.
  const direct = client(registry.host);
  try {
    for (const b of layout.blobs) {
      await direct.uploadBlob('slow/manifest', layoutBlob(b.digest));
      await direct.uploadBlob('slow/source', layoutBlob(b.digest));
    }
  } finally {
    await direct.close();
  }
});
afterAll(async () => {
  await Promise.all(relays.splice(0).map((r) => r.stop()));
  await registry?.stop();
  rmSync(work, { recursive: true, force: true });
});

async function relay(options: Omit<ProxyOptions, 'target'>): Promise<CountingProxy> {
  const r = await startProxy({ target: registry.host, ...options });
  relays.push(r);
  return r;
}

const client = testClient;

/** A blob of `size` random bytes stored in `repository` directly (not through a relay). */
async function storedBlob(repository: string, size: number): Promise<BlobFile> {
  const blob = randomBlob(repository.replace('/', '-'), size);
  const direct = client(registry.host);
  await direct.uploadBlob(repository, blob).finally(() => direct.close());
  return blob;
}

describe('a registry slow to answer what changes it', () => {
  it('a closing PUT, a PATCH and a manifest PUT answered 4× the silence timeout after their last byte: each waited for, sent once', async () => {
    const big = randomBlob('big', 2 * 1024 * 1024);
    const chunked = randomBlob('chunked', 2 * 1024 * 1024);
    const r = await relay({
      fault: ({ kind, repository, index }) =>
        kind === 'manifest-put' ||
        (kind === 'upload-put' && repository === 'slow/big') ||
        (kind === 'upload-chunk' && index === 0)
          ? { answerDelayMs: 2000 }
          : undefined,
    });
    const c = client(r.host, { timeoutMs: 500, retries: 2 });
    try {
      const manifest = readFileSync(join(layout.dir, 'blobs', 'sha256', layout.digest.slice(7)));
      const [, , put] = await Promise.all([
        c.uploadBlob('slow/big', big),
        c.uploadBlob('slow/chunked', chunked, { chunkSize: 1024 * 1024 }),
        c.putManifest('slow/manifest', 'v1', manifest, layout.mediaType),
      ]);
      expect(put.digest).toBe(layout.digest);
      expect(await c.headBlob('slow/big', big.digest)).toEqual({ size: big.size });
      expect(await c.headBlob('slow/chunked', chunked.digest)).toEqual({ size: chunked.size });
      expect(c.stats.retries).toBe(0);
      expect(r.count('upload-put')).toBe(2);
      expect(r.count('upload-chunk')).toBe(2);
      expect(r.count('manifest-put')).toBe(1);
    } finally {
      await c.close();
    }
  });

  it('an upload POST and a mount never answered (no body to commit): each try waits one silence timeout, not the commit wait', async () => {
    // Accepted and never answered, as a wedged registry does: the relay holds the POSTs until it stops.
    const r = await relay({
      hold: ({ kind }) => (kind === 'upload-start' || kind === 'mount' ? new Promise(() => {}) : undefined),
    });
    const c = client(r.host, { timeoutMs: 300, retries: 1 });
    try {
      const [start, mount] = await Promise.allSettled([
        c.uploadBlob('slow/wedged', randomBlob('wedged', 1000)),
        c.mountBlob('slow/wedged', layout.blobs[0]!.digest, 'slow/source'),
      ]);
      // The commit wait would be 1.5 s (5 × 0.3 s); the message names the wait each try had.
      expect(start).toMatchObject({
        status: 'rejected',
        reason: {
          message: expect.stringMatching(
            /^start upload to slow\/wedged: no (complete )?answer within 0\.3 s$/,
          ),
        },
      });
      // Unanswered, not refused: after its last try and one HEAD (the blob is not there), the upload gets the
      // budget's last try, which a wedged registry holds one silence timeout more.
      expect(mount).toEqual({ status: 'fulfilled', value: { mounted: false } });
      expect(r.count('upload-start')).toBe(2);
      expect(r.count('mount')).toBe(2);
      expect(r.count('blob-head')).toBe(1);
    } finally {
      await c.close();
    }
  });

  it('a mount answered (202: declined) only after 6× the silence timeout, on every try: the blob is uploaded on the last try of its budget, not failed', async () => {
    const blob = randomBlob('declined', 100_000);
    // Past the 0.3 s silence timeout a mount waits now, and past the 1.5 s commit wait it had before.
    const r = await relay({ fault: ({ kind }) => (kind === 'mount' ? { answerDelayMs: 2000 } : undefined) });
    const c = client(r.host, { timeoutMs: 300, retries: 2 });
    try {
      // As phase 1 stores a blob: the mount, then the upload on the same budget.
      const budget = c.transport.budget();
      expect(await c.mountBlob('slow/declined', blob.digest, 'slow/nowhere', budget)).toEqual({
        mounted: false,
      });
      await c.uploadBlob('slow/declined', blob, { budget });
      expect(r.count('mount')).toBe(3);
      expect(r.count('blob-head')).toBe(1);
      expect(r.count('upload-start')).toBe(1);
      expect(r.count('upload-put')).toBe(1);
      expect(await c.headBlob('slow/declined', blob.digest)).toEqual({ size: blob.size });
    } finally {
      await c.close();
    }
  });

  it('a closing PUT answered only after even that wait, on its last try: the blob the registry committed meanwhile is found (HEAD), not sent again', async () => {
    const blob = randomBlob('late', 1024 * 1024);
    // Commit wait at 0.3 s: 1.5 s, fired by 2.5 s at the latest; the registry's answer comes at 3.2 s.
    const r = await relay({
      fault: ({ kind, index }) =>
        kind === 'upload-put' && index === 0 ? { answerDelayMs: 3200 } : undefined,
    });
    // No retry left after the PUT: the HEAD is asked all the same.
    const c = client(r.host, { timeoutMs: 300, retries: 0 });
    try {
      await c.uploadBlob('slow/late', blob);
      expect(r.count('upload-put')).toBe(1);
      expect(r.count('blob-head')).toBe(1);
      expect(r.bytesUp()).toBeLessThan(1.1 * blob.size);
      expect(c.stats.bytesUploaded).toBe(blob.size);
    } finally {
      await c.close();
    }
  });
});

describe('a slow but steady link', () => {
  it('a 4 MiB layer pushed over a 3 MB/s uplink (1.4 × the silence timeout in all): no false stall, one PUT, no retry', async () => {
    const blob = randomBlob('uplink', 4 * 1024 * 1024);
    const r = await relay({
      fault: ({ kind }) => (kind === 'upload-put' ? { throttleUpBytesPerSecond: 3_000_000 } : undefined),
    });
    const c = client(r.host, { timeoutMs: 1000, retries: 1 });
    try {
      await c.uploadBlob('slow/uplink', blob);
      expect(c.stats.retries).toBe(0);
      expect(r.count('upload-put')).toBe(1);
      expect(await c.headBlob('slow/uplink', blob.digest)).toEqual({ size: blob.size });
    } finally {
      await c.close();
    }
  });
});

describe('a download that trickles', () => {
  it('a blob GET trickling under 1 KiB/s (never silent) is a stall: resumed with Range, progress counted once', async () => {
    const blob = await storedBlob('slow/trickle', 8 * 1024);
    // 50 bytes every 0.1 s: the whole blob would take 16 s, a silence timeout never fires.
    const r = await relay({
      fault: ({ kind, index }) =>
        kind === 'blob-get' && index === 0 ? { throttleBytesPerSecond: 500 } : undefined,
    });
    const c = client(r.host, { timeoutMs: 500, retries: 2 });
    const progress: number[] = [];
    const dest = join(work, 'trickle.out');
    try {
      await c.downloadBlob('slow/trickle', blob.digest, dest, {
        size: blob.size,
        onProgress: (n) => progress.push(n),
      });
      expect(await digestFile(dest)).toBe(blob.digest);
      expect(c.stats.retries).toBe(1);
      const gets = r.records.filter((g) => g.kind === 'blob-get');
      expect(gets.map((g) => g.status)).toEqual([200, 206]);
      expect(gets[0]!.bytesDown).toBeGreaterThan(0);
      expect(progress).toEqual([...progress].sort((a, b) => a - b));
      expect(progress.at(-1)).toBe(blob.size);
    } finally {
      await c.close();
    }
  });
});

describe('a blob GET redirected to storage', () => {
  it('storage slow to start answering (past the silence timeout) once: the retry asks the registry again for a fresh URL, and the blob arrives', async () => {
    const blob = await storedBlob('slow/stored', 256 * 1024);
    const storage = await relay({
      fault: ({ kind, index }) => (kind === 'blob-get' && index === 0 ? { answerDelayMs: 2500 } : undefined),
    });
    // The registry's side: every blob GET answered 307 to storage, as registries on S3 or GCS do.
    let redirects = 0;
    const front = createServer((req, res) => {
      redirects++;
      res.writeHead(307, { location: `http://${storage.host}${req.url}` }).end();
    });
    await new Promise<void>((ready) => front.listen(0, '127.0.0.1', ready));
    const c = client(`127.0.0.1:${(front.address() as AddressInfo).port}`, { timeoutMs: 500, retries: 2 });
    const dest = join(work, 'stored.out');
    try {
      await c.downloadBlob('slow/stored', blob.digest, dest, { size: blob.size });
      expect(await digestFile(dest)).toBe(blob.digest);
      expect(c.stats.retries).toBe(1);
      expect(redirects).toBe(2);
      expect(storage.count('blob-get')).toBe(2);
    } finally {
      await c.close();
      front.closeAllConnections();
      await new Promise((closed) => front.close(closed));
    }
  });
});

describe('answers whose own body trickles', () => {
  // 64 KiB at 400 B/s: 164 s of a page that never falls silent, were it read to its end (or its 64 KiB limit).
  const page = `<html><head><title>503 Service Unavailable</title></head><body>${'busy '.repeat(13_000)}</body></html>`;

  /** Downloads `blob` from `repository` through `r` and checks its bytes; resolves the retries it took. */
  async function retriesThrough(r: CountingProxy, repository: string, blob: BlobFile): Promise<number> {
    const c = client(r.host, { timeoutMs: 500, retries: 2 });
    const dest = join(work, `${repository.replace('/', '-')}.out`);
    try {
      await c.downloadBlob(repository, blob.digest, dest, { size: blob.size });
      expect(await digestFile(dest)).toBe(blob.digest);
      return c.stats.retries;
    } finally {
      await c.close();
    }
  }

  it('a blob GET answered 503 with an error page trickling at 400 B/s: the page is given up after the silence timeout, the status retried', async () => {
    const blob = await storedBlob('slow/errpage', 16 * 1024);
    const r = await relay({
      fault: ({ kind, index }) =>
        kind === 'blob-get' && index === 0
          ? { status: 503, headers: { 'content-type': 'text/html' }, body: page, trickleBytesPerSecond: 400 }
          : undefined,
    });
    expect(await retriesThrough(r, 'slow/errpage', blob)).toBe(1);
    const gets = r.records.filter((g) => g.kind === 'blob-get');
    expect(gets.map((g) => g.status)).toEqual([503, 200]);
    expect(gets[0]!.bytesDown).toBeLessThan(page.length / 4);
  }, 20_000);

  it('a blob GET redirected (307) with a page trickling at 400 B/s: the page is given up after the silence timeout and the redirect followed', async () => {
    const blob = await storedBlob('slow/redirpage', 16 * 1024);
    const storage = await relay({});
    const r = await relay({
      fault: ({ kind, index, repository, reference }) =>
        kind === 'blob-get' && index === 0
          ? {
              status: 307,
              headers: { location: `http://${storage.host}/v2/${repository}/blobs/${reference}` },
              body: page,
              trickleBytesPerSecond: 400,
            }
          : undefined,
    });
    expect(await retriesThrough(r, 'slow/redirpage', blob)).toBe(0);
    expect(storage.count('blob-get')).toBe(1);
    expect(r.records.filter((g) => g.kind === 'blob-get')[0]!.bytesDown).toBeLessThan(page.length / 4);
  }, 20_000);
});

describe('Retry-After as registries and proxies send it', () => {
  it('a 429 with Retry-After: 1 sent twice (two proxies on the way each added it) is waited 1 s, not taken for a date in 2001 and retried at once; the wait is told', async () => {
    const blob = await storedBlob('slow/ratelimited', 1024);
    const r = await relay({
      fault: ({ kind, index }) =>
        kind === 'blob-head' && index === 0
          ? { status: 429, headers: { 'retry-after': ['1', '1'] } }
          : undefined,
    });
    const told: string[] = [];
    const c = client(r.host, { timeoutMs: 1000, retries: 2, onServerWait: (line) => told.push(line) });
    try {
      expect(await c.headBlob('slow/ratelimited', blob.digest)).toEqual({ size: blob.size });
      expect(told).toEqual([
        expect.stringMatching(
          /^HEAD blob sha256:\w+ in slow\/ratelimited: HTTP 429 .*; waiting 1 s as the registry asked \(Retry-After\)\.$/,
        ),
      ]);
      const heads = r.records.filter((h) => h.kind === 'blob-head');
      expect(heads.map((h) => h.status)).toEqual([429, 200]);
      // A lower bound only: a loaded machine makes the gap longer, never shorter.
      expect(heads[1]!.arrivedAt - heads[0]!.arrivedAt).toBeGreaterThanOrEqual(950);
    } finally {
      await c.close();
    }
  });
});
