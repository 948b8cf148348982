/**
 * A local stand-in for the GitHub Actions cache service, speaking what the unmodified @actions/cache 6.3 sends:
 *
 * - v2 (github.com): twirp JSON at /twirp/github.actions.results.api.v1.CacheService/{CreateCacheEntry,
 *   FinalizeCacheEntryUpload,GetCacheEntryDownloadURL}, uploads through the Azure blob SDK to a signed URL shaped
 *   like a path-style blob URL (`/<account>/<container>/<blob>?<sas>`, the form the SDK accepts for an IP host):
 *   one `PUT` up to 128 MiB, above that `PUT ?comp=block&blockid=` per block and `PUT ?comp=blocklist` (XML).
 * - v1 (GHES, ACTIONS_CACHE_URL): `_apis/artifactcache/cache?keys=&version=` lookup (204 on a miss),
 *   `POST caches` reserve, `PATCH caches/<id>` chunks with Content-Range, `POST caches/<id>` commit.
 * - Downloads from a non-Azure host are one plain GET, checked by the library against Content-Length; ranged
 *   GETs (`Range: bytes=a-b`, as Azure blob storage answers them: 206 with Content-Range, 416 past the end) are
 *   what the streaming restore sends.
 *
 * Entries are matched like GitHub does: only within the requested version (a hash of the cache paths), exact
 * primary key first, then the newest prefix match of the key and of each restore key in order. A key+version
 * already finalized or being created is refused (409), so the first writer wins. Counters and fault switches
 * let tests prove what went over the wire and what happens when the service breaks; a bandwidth limit shared
 * by all downloads stands in for the hosted cache's speed in benchmarks. Hostile switches make it lie the way a
 * compromised or buggy service (or whoever can write to a repository's cache) could: another matched key, a
 * crafted archive in place of a saved one, an absurd archive size.
 */
import { randomBytes } from 'node:crypto';
import {
  copyFileSync,
  createReadStream,
  createWriteStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  renameSync,
  statSync,
} from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';

export type CacheCall =
  | 'CreateCacheEntry'
  | 'FinalizeCacheEntryUpload'
  | 'GetCacheEntryDownloadURL'
  | 'BlobPut'
  | 'BlobBlock'
  | 'BlobBlockList'
  | 'Download'
  | 'V1Lookup'
  | 'V1List'
  | 'V1Reserve'
  | 'V1Upload'
  | 'V1Commit';

export interface CacheEntryInfo {
  id: number;
  key: string;
  version: string;
  sizeBytes: number;
  finalized: boolean;
  createdAt: number;
}

interface Entry extends CacheEntryInfo {
  /** The SAS signature of this entry's blob URL; requests without it are refused like an expired SAS. */
  sig: string;
  file: string;
}

export interface CacheServiceCounters {
  requests: Partial<Record<CacheCall, number>>;
  /** Blob PUT / v1 PATCH bodies received. */
  bytesUploaded: number;
  /** Archive bytes sent by downloads. */
  bytesDownloaded: number;
  /** Downloads that asked for a byte range. */
  rangedDownloads: number;
}

const TWIRP_PREFIX = '/twirp/github.actions.results.api.v1.CacheService/';
const V1_PREFIX = '/_apis/artifactcache/';
const ACCOUNT = 'devstoreaccount1';
const CONTAINER = 'actions-cache';
const TWIRP_CALLS = new Set(['CreateCacheEntry', 'FinalizeCacheEntryUpload', 'GetCacheEntryDownloadURL']);

class HttpFailure extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly twirpCode = 'internal',
  ) {
    super(message);
  }
}

export class CacheService {
  readonly token = `test-runtime-token-${randomBytes(6).toString('hex')}`;
  readonly counters: CacheServiceCounters = {
    requests: {},
    bytesUploaded: 0,
    bytesDownloaded: 0,
    rangedDownloads: 0,
  };
  /** Every v1 lookup as it arrived (path with query, Accept, Authorization): who asks how. */
  readonly v1Lookups: Array<{ path: string; accept?: string; authorization?: string }> = [];
  /** Entries larger than this are refused (v1 at reserve with 400, v2 at finalize), like the repo quota. */
  maxEntryBytes = Number.POSITIVE_INFINITY;
  private failing: Set<CacheCall> | 'all' = new Set();
  private failStatus = 500;
  private truncate = false;
  private cuts: { remaining: number; afterBytes: number } = { remaining: 0, afterBytes: 0 };
  private rangeRefusal: number | undefined;
  private plainRefusal: number | undefined;
  private damageFrom: number | undefined;
  private throttle: Throttle | undefined;
  private forgedKey: ((asked: string) => string) | undefined;
  private claimedSize: number | undefined;
  private v1HitStatus = 200;
  private v1AnswerCuts = 0;
  private redirecting = false;
  private v1Padding = 0;
  private hanging = new Set<CacheCall>();
  /** Answers held back by hang(), so dropHung() can end them the way a dying proxy does. */
  private readonly held: ServerResponse[] = [];
  private readonly entries = new Map<number, Entry>();
  private nextId = 1;
  private clock = 0;

  private constructor(
    private readonly server: Server,
    readonly port: number,
    readonly root: string,
  ) {}

  static async start(): Promise<CacheService> {
    const root = mkdtempSync(join(tmpdir(), 'ici-cache-service-'));
    mkdirSync(join(root, 'blobs'));
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const service = new CacheService(server, (server.address() as AddressInfo).port, root);
    server.on('request', (req, res) => void service.handle(req, res));
    return service;
  }

  /** The host name in the service's URLs (its own and the signed ones it hands out). */
  private hostName = '127.0.0.1';

  /**
   * Hands out URLs under `name` (e.g. one only a test forward proxy resolves) from now on; no name: 127.0.0.1.
   * The service still listens on 127.0.0.1.
   */
  reachAs(name = '127.0.0.1'): void {
    this.hostName = name;
  }

  get url(): string {
    return `http://${this.hostName}:${this.port}/`;
  }

  /** What a child process needs to use this service through the v2 (github.com) protocol. */
  env(dirs: { workspace?: string; runnerTemp?: string } = {}): Record<string, string> {
    return {
      ACTIONS_CACHE_SERVICE_V2: 'true',
      ACTIONS_RESULTS_URL: this.url,
      ACTIONS_RUNTIME_TOKEN: this.token,
      GITHUB_SERVER_URL: 'https://github.com',
      ...workDirs(dirs),
    };
  }

  /** The GHES variant: v1 protocol at ACTIONS_CACHE_URL (the library picks v1 for a non-github.com server). */
  envV1(dirs: { workspace?: string; runnerTemp?: string } = {}): Record<string, string> {
    return {
      ACTIONS_CACHE_URL: this.url,
      ACTIONS_RUNTIME_TOKEN: this.token,
      GITHUB_SERVER_URL: 'https://ghes.example.com',
      ...workDirs(dirs),
    };
  }

  /** Makes the named calls (or every call) answer `status`, until heal(). */
  fail(calls: CacheCall[] | 'all', status = 500): void {
    this.failing = calls === 'all' ? 'all' : new Set(calls);
    this.failStatus = status;
  }

  /** The named calls get no answer at all (the connection stays open until stop()), like a hung service. */
  hang(calls: CacheCall[]): void {
    this.hanging = new Set(calls);
  }

  /** Resets the connections of the calls hang() held: the client sees ECONNRESET. */
  dropHung(): void {
    for (const res of this.held.splice(0)) res.destroy();
  }

  /** Downloads send the full Content-Length but only half the body, then drop the connection. */
  truncateDownloads(on = true): void {
    this.truncate = on;
  }

  /** The next `count` downloads (ranged or not) send their headers, `afterBytes` of body, then drop. */
  cutDownloads(count: number, afterBytes: number): void {
    this.cuts = { remaining: count, afterBytes };
  }

  /** Ranged GETs answer `status` (plain GETs still work), like a store that refuses ranges on this URL. */
  refuseRanges(status: number): void {
    this.rangeRefusal = status;
  }

  /** Plain (whole-archive) GETs answer `status` (ranged GETs still work), e.g. to make the library's restore fail. */
  refusePlainDownloads(status: number): void {
    this.plainRefusal = status;
  }

  /** Ranged GETs send wrong bytes from archive offset `offset` on (plain GETs stay intact). */
  damageRangesFrom(offset: number): void {
    this.damageFrom = offset;
  }

  /**
   * Lookups answer `forge(key asked for)` as the matched key: with the matched entry's archive when there is
   * one, else (v2 only) with a hit whose archive URL answers 404 (so a restore fails after the lookup).
   */
  forgeMatchedKey(forge: (asked: string) => string): void {
    this.forgedKey = forge;
  }

  /**
   * v1 lookups that hit answer `status` (another 2xx, which the library takes as it takes a 200) with the same
   * body: an answer the streaming restore does not know.
   */
  answerV1HitsWith(status: number): void {
    this.v1HitStatus = status;
  }

  /** The next `count` v1 lookups that hit send their headers and half their JSON, then drop the connection. */
  cutV1Answers(count: number): void {
    this.v1AnswerCuts = count;
  }

  /** v1 lookups that hit add a `padding` field of `bytes` characters to their JSON, sent chunked. */
  padV1Answers(bytes: number): void {
    this.v1Padding = bytes;
  }

  /**
   * Archive GETs (ranged or not) answer 302 to the same blob URL with `redirected=1` added, which then serves it,
   * like a storage front end handing out its own signed URL.
   */
  redirectDownloads(): void {
    this.redirecting = true;
  }

  /** Ranged GETs claim the archive is `bytes` long (Content-Range total); the bytes sent stay the real ones. */
  claimArchiveSize(bytes: number): void {
    this.claimedSize = bytes;
  }

  /** Replaces the archive of the finalized entry `key` with the file `archive`, as a poisoned cache would. */
  replaceArchive(key: string, archive: string): void {
    const entry = [...this.entries.values()].find((e) => e.key === key && e.finalized);
    if (!entry) throw new Error(`no finalized entry ${key}`);
    copyFileSync(archive, entry.file);
    entry.sizeBytes = statSync(entry.file).size;
  }

  /** The signed archive URL the service hands out for the finalized entry `key` (for benches: a plain curl). */
  archiveUrl(key: string): string {
    const entry = [...this.entries.values()].find((e) => e.key === key && e.finalized);
    if (!entry) throw new Error(`no finalized entry ${key}`);
    return this.blobUrl(entry);
  }

  /** Limits all downloads together to `bytesPerSecond` (undefined: no limit). */
  limitDownloads(bytesPerSecond: number | undefined): void {
    this.throttle = bytesPerSecond ? new Throttle(bytesPerSecond) : undefined;
  }

  heal(): void {
    this.failing = new Set();
    this.hanging = new Set();
    this.truncate = false;
    this.cuts = { remaining: 0, afterBytes: 0 };
    this.rangeRefusal = undefined;
    this.plainRefusal = undefined;
    this.damageFrom = undefined;
    this.forgedKey = undefined;
    this.claimedSize = undefined;
    this.v1HitStatus = 200;
    this.v1AnswerCuts = 0;
    this.redirecting = false;
    this.v1Padding = 0;
  }

  list(): CacheEntryInfo[] {
    return [...this.entries.values()].map(({ id, key, version, sizeBytes, finalized, createdAt }) => ({
      id,
      key,
      version,
      sizeBytes,
      finalized,
      createdAt,
    }));
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await rm(this.root, { recursive: true, force: true });
  }

  private count(call: CacheCall): void {
    this.counters.requests[call] = (this.counters.requests[call] ?? 0) + 1;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', this.url);
    const call = classify(req.method ?? 'GET', url);
    const isTwirp = url.pathname.startsWith(TWIRP_PREFIX);
    try {
      if (!call) throw new HttpFailure(404, `no route for ${req.method} ${url.pathname}`, 'bad_route');
      this.count(call);
      if (this.hanging.has(call)) {
        req.resume();
        this.held.push(res);
        return;
      }
      if (this.failing === 'all' || this.failing.has(call)) {
        req.resume();
        throw new HttpFailure(this.failStatus, `injected fault on ${call}`);
      }
      if (isTwirp || url.pathname.startsWith(V1_PREFIX)) this.checkToken(req);
      await this.route(call, req, res, url);
    } catch (error) {
      const failure =
        error instanceof HttpFailure
          ? error
          : new HttpFailure(500, error instanceof Error ? error.message : 'error');
      req.resume();
      if (res.headersSent) {
        res.destroy();
        return;
      }
      // Always JSON for the API: the library retries non-JSON answers as if they were outages.
      if (isTwirp) sendJson(res, failure.status, { code: failure.twirpCode, msg: failure.message });
      else sendJson(res, failure.status, { message: failure.message });
    }
  }

  private checkToken(req: IncomingMessage): void {
    if (req.headers.authorization !== `Bearer ${this.token}`) {
      throw new HttpFailure(401, 'missing or wrong runtime token', 'unauthenticated');
    }
  }

  private async route(call: CacheCall, req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    switch (call) {
      case 'CreateCacheEntry': {
        const body = (await readJson(req)) as { key?: string; version?: string };
        const entry = this.reserve(String(body.key ?? ''), String(body.version ?? ''));
        return sendJson(res, 200, { ok: true, signed_upload_url: this.blobUrl(entry) });
      }
      case 'FinalizeCacheEntryUpload': {
        const body = (await readJson(req)) as { key?: string; version?: string; size_bytes?: string };
        const entry = this.pending(String(body.key ?? ''), String(body.version ?? ''));
        const size = Number(body.size_bytes);
        if (size > this.maxEntryBytes) {
          this.entries.delete(entry.id);
          return sendJson(res, 200, {
            ok: false,
            message: `cache entry too large: ${size} bytes is over the limit of ${this.maxEntryBytes}`,
          });
        }
        this.finalize(entry, size);
        return sendJson(res, 200, { ok: true, entry_id: String(entry.id) });
      }
      case 'GetCacheEntryDownloadURL': {
        const body = (await readJson(req)) as { key?: string; version?: string; restore_keys?: string[] };
        const entry = this.match(String(body.version ?? ''), [
          String(body.key ?? ''),
          ...(body.restore_keys ?? []),
        ]);
        if (this.forgedKey) {
          const missing = `${this.url}${ACCOUNT}/${CONTAINER}/0?sig=none`;
          return sendJson(res, 200, {
            ok: true,
            signed_download_url: entry ? this.blobUrl(entry) : missing,
            matched_key: this.forgedKey(String(body.key ?? '')),
          });
        }
        if (!entry) return sendJson(res, 200, { ok: false, signed_download_url: '', matched_key: '' });
        return sendJson(res, 200, {
          ok: true,
          signed_download_url: this.blobUrl(entry),
          matched_key: entry.key,
        });
      }
      case 'BlobPut': {
        const entry = this.blobEntry(url);
        if (req.headers['x-ms-blob-type'] !== 'BlockBlob')
          throw new HttpFailure(400, 'x-ms-blob-type must be BlockBlob');
        await this.receive(req, entry.file);
        return sendBlobCreated(res);
      }
      case 'BlobBlock': {
        const entry = this.blobEntry(url);
        const blockId = url.searchParams.get('blockid');
        if (!blockId) throw new HttpFailure(400, 'blockid is required');
        await this.receive(req, blockFile(entry, blockId));
        return sendBlobCreated(res);
      }
      case 'BlobBlockList': {
        const entry = this.blobEntry(url);
        const xml = (await readBody(req)).toString('utf8');
        const ids = [
          ...xml.matchAll(/<(?:Latest|Uncommitted|Committed)>([^<]*)<\/(?:Latest|Uncommitted|Committed)>/g),
        ].map((m) => m[1]!);
        if (ids.length === 0) throw new HttpFailure(400, 'empty block list');
        await commitBlocks(entry, ids);
        return sendBlobCreated(res);
      }
      case 'Download':
        if (this.redirecting && !url.searchParams.has('redirected')) {
          // Counted as what it answers: a ranged GET stays one (plain GETs are the library's).
          if ((req.headers.range ?? req.headers['x-ms-range']) !== undefined) this.counters.rangedDownloads++;
          url.searchParams.set('redirected', '1');
          // Absolute: @actions/http-client does not resolve a relative Location.
          res.writeHead(302, { Location: `${this.url}${url.pathname.slice(1)}${url.search}` }).end();
          return;
        }
        return this.download(req, res, this.blobEntry(url, true));
      case 'V1Lookup': {
        this.v1Lookups.push({
          path: req.url ?? '',
          accept: req.headers.accept,
          authorization: req.headers.authorization,
        });
        // What the library always sends (cacheHttpClient.js): a client without it is not asking as it does.
        if (!String(req.headers.accept).includes('api-version=6.0-preview.1'))
          throw new HttpFailure(400, 'Accept must name api-version=6.0-preview.1');
        const keys = (url.searchParams.get('keys') ?? '').split(',').filter(Boolean);
        const entry = this.match(url.searchParams.get('version') ?? '', keys);
        if (!entry) {
          res.writeHead(204).end();
          return;
        }
        const answer = {
          cacheKey: this.forgedKey ? this.forgedKey(keys[0] ?? '') : entry.key,
          scope: 'refs/heads/main',
          cacheVersion: entry.version,
          creationTime: new Date(entry.createdAt).toISOString(),
          archiveLocation: this.blobUrl(entry),
        };
        if (this.v1Padding > 0) {
          // Chunked (no Content-Length): the client learns the size only by reading.
          res.writeHead(200, { 'Content-Type': 'application/json' });
          res.end(JSON.stringify({ ...answer, padding: 'x'.repeat(this.v1Padding) }));
          return;
        }
        if (this.v1AnswerCuts > 0) {
          this.v1AnswerCuts--;
          const body = Buffer.from(JSON.stringify(answer));
          res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': body.length });
          res.write(body.subarray(0, body.length >> 1), () => res.destroy());
          return;
        }
        return sendJson(res, this.v1HitStatus, answer);
      }
      case 'V1List': {
        const key = url.searchParams.get('key') ?? '';
        const caches = [...this.entries.values()].filter((e) => e.finalized && e.key === key);
        return sendJson(res, 200, {
          totalCount: caches.length,
          artifactCaches: caches.map((e) => ({
            cacheKey: e.key,
            cacheVersion: e.version,
            scope: 'refs/heads/main',
          })),
        });
      }
      case 'V1Reserve': {
        const body = (await readJson(req)) as { key?: string; version?: string; cacheSize?: number };
        if (typeof body.cacheSize === 'number' && body.cacheSize > this.maxEntryBytes) {
          throw new HttpFailure(
            400,
            `Cache size of ${body.cacheSize} B is over the data cap limit, not saving cache.`,
          );
        }
        const entry = this.reserve(String(body.key ?? ''), String(body.version ?? ''));
        return sendJson(res, 201, { cacheId: entry.id });
      }
      case 'V1Upload': {
        const entry = this.v1Entry(url);
        const range = /^bytes (\d+)-(\d+)\/\*$/.exec(String(req.headers['content-range'] ?? ''));
        if (!range) throw new HttpFailure(400, 'Content-Range bytes a-b/* is required');
        const data = await readBody(req);
        const start = Number(range[1]);
        if (data.length !== Number(range[2]) - start + 1)
          throw new HttpFailure(400, 'body length != Content-Range');
        const handle = await open(entry.file, existsSync(entry.file) ? 'r+' : 'w');
        try {
          await handle.write(data, 0, data.length, start);
        } finally {
          await handle.close();
        }
        this.counters.bytesUploaded += data.length;
        res.writeHead(204).end();
        return;
      }
      case 'V1Commit': {
        const entry = this.v1Entry(url);
        const body = (await readJson(req)) as { size?: number };
        this.finalize(entry, Number(body.size));
        res.writeHead(204).end();
        return;
      }
    }
  }

  private reserve(key: string, version: string): Entry {
    if (!key || !version) throw new HttpFailure(400, 'key and version are required', 'invalid_argument');
    for (const e of this.entries.values()) {
      if (e.key === key && e.version === version) {
        // GitHub's answer to a second writer, whether the first has finished or is still uploading.
        throw new HttpFailure(
          409,
          'cache entry with the same key, version, and scope already exists',
          'already_exists',
        );
      }
    }
    const id = this.nextId++;
    const entry: Entry = {
      id,
      key,
      version,
      sizeBytes: 0,
      finalized: false,
      createdAt: 0,
      sig: randomBytes(12).toString('hex'),
      file: join(this.root, 'blobs', String(id)),
    };
    this.entries.set(id, entry);
    return entry;
  }

  private pending(key: string, version: string): Entry {
    for (const e of this.entries.values()) {
      if (e.key === key && e.version === version && !e.finalized) return e;
    }
    throw new HttpFailure(404, `no cache entry is being created for ${key}`, 'not_found');
  }

  private finalize(entry: Entry, size: number): void {
    const actual = existsSync(entry.file) ? statSync(entry.file).size : -1;
    if (actual !== size) {
      throw new HttpFailure(400, `uploaded ${actual} bytes but finalize says ${size}`, 'invalid_argument');
    }
    entry.sizeBytes = size;
    entry.finalized = true;
    // A logical clock: "newest" must not depend on two saves landing in different milliseconds.
    entry.createdAt = Date.now() * 1000 + (this.clock++ % 1000);
  }

  private match(version: string, keys: string[]): Entry | undefined {
    const candidates = [...this.entries.values()]
      .filter((e) => e.finalized && e.version === version)
      .sort((a, b) => b.createdAt - a.createdAt);
    const [primary] = keys;
    const exact = candidates.find((e) => e.key === primary);
    if (exact) return exact;
    for (const prefix of keys) {
      const found = candidates.find((e) => e.key.startsWith(prefix));
      if (found) return found;
    }
    return undefined;
  }

  private blobUrl(entry: Entry): string {
    const sas = new URLSearchParams({
      sv: '2024-11-04',
      sr: 'b',
      sp: 'rcw',
      se: '2099-01-01T00:00:00Z',
      sig: entry.sig,
    });
    return `${this.url}${ACCOUNT}/${CONTAINER}/${entry.id}?${sas.toString()}`;
  }

  private blobEntry(url: URL, mustBeFinal = false): Entry {
    const [, account, container, blob] = url.pathname.split('/');
    const entry = this.entries.get(Number(blob));
    if (account !== ACCOUNT || container !== CONTAINER || !entry) throw new HttpFailure(404, 'BlobNotFound');
    if (url.searchParams.get('sig') !== entry.sig)
      throw new HttpFailure(403, 'AuthenticationFailed: bad sig');
    if (mustBeFinal !== entry.finalized)
      throw new HttpFailure(mustBeFinal ? 404 : 409, 'blob not in that state');
    return entry;
  }

  private v1Entry(url: URL): Entry {
    const entry = this.entries.get(Number(url.pathname.slice(`${V1_PREFIX}caches/`.length)));
    if (!entry || entry.finalized) throw new HttpFailure(404, 'no cache reservation with that id');
    return entry;
  }

  private async receive(req: IncomingMessage, file: string): Promise<void> {
    const temp = `${file}.part-${randomBytes(4).toString('hex')}`;
    let bytes = 0;
    req.on('data', (chunk: Buffer) => (bytes += chunk.length));
    await pipeline(req, createWriteStream(temp));
    renameSync(temp, file);
    this.counters.bytesUploaded += bytes;
  }

  private async download(req: IncomingMessage, res: ServerResponse, entry: Entry): Promise<void> {
    const rangeHeader = req.headers.range ?? req.headers['x-ms-range'];
    let start = 0;
    let end = entry.sizeBytes - 1;
    let status = 200;
    const headers: Record<string, string> = {
      'Content-Type': 'application/octet-stream',
      'Accept-Ranges': 'bytes',
    };
    if (rangeHeader !== undefined) {
      this.counters.rangedDownloads++;
      if (this.rangeRefusal !== undefined) throw new HttpFailure(this.rangeRefusal, 'ranges refused');
      const m = /^bytes=(\d+)-(\d*)$/.exec(String(rangeHeader));
      if (!m) throw new HttpFailure(400, `unsupported Range ${String(rangeHeader)}`);
      start = Number(m[1]);
      if (start >= entry.sizeBytes) {
        res.writeHead(416, { 'Content-Range': `bytes */${entry.sizeBytes}` }).end();
        return;
      }
      if (m[2]) end = Math.min(end, Number(m[2]));
      status = 206;
      const claimed = this.claimedSize ?? entry.sizeBytes;
      const claimedEnd = m[2] ? Math.min(Number(m[2]), claimed - 1) : claimed - 1;
      headers['Content-Range'] = `bytes ${start}-${claimedEnd}/${claimed}`;
    } else if (this.plainRefusal !== undefined) {
      throw new HttpFailure(this.plainRefusal, 'plain downloads refused');
    }
    const length = end - start + 1;
    headers['Content-Length'] = String(length);
    res.writeHead(status, headers);
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    let cutAfter: number | undefined;
    if (this.truncate) cutAfter = Math.floor(length / 2);
    else if (this.cuts.remaining > 0) {
      this.cuts.remaining--;
      cutAfter = Math.min(this.cuts.afterBytes, length);
    }
    const sendTo = cutAfter ?? length;
    if (sendTo === 0) {
      if (cutAfter !== undefined) res.destroy();
      else res.end();
      return;
    }
    const damageFrom = rangeHeader !== undefined ? this.damageFrom : undefined;
    const throttle = this.throttle;
    // One 1 MiB buffer per response, read into again once the socket took it: the real service is remote and
    // costs the runner no CPU, and a fresh buffer per read made this stand-in cost more CPU than the client it
    // serves (1 GiB in 8 parallel ranges: 2.1-2.3 CPU-s that way, 1.3 this way).
    const buffer = Buffer.allocUnsafe(1 << 20);
    const file = await open(entry.file, 'r');
    try {
      for (let sent = 0; sent < sendTo;) {
        const offset = start + sent;
        const { bytesRead } = await file.read(buffer, 0, Math.min(buffer.length, sendTo - sent), offset);
        if (bytesRead === 0) throw new Error('the archive file is shorter than its entry');
        const chunk = buffer.subarray(0, bytesRead);
        if (damageFrom !== undefined && offset + bytesRead > damageFrom) {
          for (let i = Math.max(0, damageFrom - offset); i < bytesRead; i++) chunk[i] = chunk[i]! ^ 0x5a;
        }
        this.counters.bytesDownloaded += bytesRead;
        if (throttle) await throttle.wait(bytesRead);
        // The client went away: nothing more to send.
        if (!(await written(res, chunk))) return;
        sent += bytesRead;
      }
    } finally {
      await file.close();
    }
    if (cutAfter !== undefined) res.destroy();
    else res.end();
  }
}

/**
 * A token bucket shared by every response: the sum of all downloads stays at the rate. Up to 50 ms of unused
 * rate carries over, so timers that fire late (a busy machine) do not lower the rate below the target.
 */
class Throttle {
  private nextFree = performance.now();

  constructor(private readonly bytesPerSecond: number) {}

  async wait(bytes: number): Promise<void> {
    const now = performance.now();
    const start = Math.max(now - 50, this.nextFree);
    this.nextFree = start + (bytes * 1000) / this.bytesPerSecond;
    const delay = this.nextFree - now;
    if (delay > 1) await new Promise((resolve) => setTimeout(resolve, delay));
  }
}

function workDirs(dirs: { workspace?: string; runnerTemp?: string }): Record<string, string> {
  const env: Record<string, string> = {};
  if (dirs.workspace) env.GITHUB_WORKSPACE = dirs.workspace;
  if (dirs.runnerTemp) env.RUNNER_TEMP = dirs.runnerTemp;
  return env;
}

function classify(method: string, url: URL): CacheCall | undefined {
  const path = url.pathname;
  if (path.startsWith(TWIRP_PREFIX)) {
    const name = path.slice(TWIRP_PREFIX.length);
    return method === 'POST' && TWIRP_CALLS.has(name) ? (name as CacheCall) : undefined;
  }
  if (path.startsWith(V1_PREFIX)) {
    const rest = path.slice(V1_PREFIX.length);
    if (rest === 'cache' && method === 'GET') return 'V1Lookup';
    if (rest === 'caches' && method === 'GET') return 'V1List';
    if (rest === 'caches' && method === 'POST') return 'V1Reserve';
    if (/^caches\/\d+$/.test(rest))
      return method === 'PATCH' ? 'V1Upload' : method === 'POST' ? 'V1Commit' : undefined;
    return undefined;
  }
  if (path.startsWith(`/${ACCOUNT}/${CONTAINER}/`)) {
    if (method === 'GET' || method === 'HEAD') return 'Download';
    if (method !== 'PUT') return undefined;
    const comp = url.searchParams.get('comp');
    if (comp === 'block') return 'BlobBlock';
    if (comp === 'blocklist') return 'BlobBlockList';
    return comp ? undefined : 'BlobPut';
  }
  return undefined;
}

function blockFile(entry: Entry, blockId: string): string {
  return `${entry.file}.block-${Buffer.from(blockId).toString('hex')}`;
}

async function commitBlocks(entry: Entry, ids: string[]): Promise<void> {
  const missing = ids.find((id) => !existsSync(blockFile(entry, id)));
  if (missing) throw new HttpFailure(400, `InvalidBlockList: block ${missing} was never staged`);
  const temp = `${entry.file}.commit`;
  // One pipeline over all blocks: a pipeline per block would pile listeners onto the one output stream.
  async function* blocks() {
    for (const id of ids) yield* createReadStream(blockFile(entry, id));
  }
  await pipeline(blocks, createWriteStream(temp));
  renameSync(temp, entry.file);
  await Promise.all(ids.map((id) => rm(blockFile(entry, id), { force: true })));
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

/** Headers the blob SDK reads from a 201; an empty body is what Azure sends. */
function sendBlobCreated(res: ServerResponse): void {
  res.writeHead(201, {
    ETag: `"0x${randomBytes(8).toString('hex').toUpperCase()}"`,
    'Last-Modified': new Date().toUTCString(),
    'x-ms-request-id': randomBytes(16).toString('hex'),
    'x-ms-version': '2024-11-04',
    'x-ms-request-server-encrypted': 'true',
    'Content-Length': '0',
  });
  res.end();
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const text = (await readBody(req)).toString('utf8');
  try {
    return JSON.parse(text || '{}') as Record<string, unknown>;
  } catch {
    throw new HttpFailure(400, 'body is not JSON', 'malformed');
  }
}

/**
 * Simulates a later workflow run as the runner does it: the same RUNNER_TEMP and HOME paths (cache versions hash
 * the path strings, so fresh mkdtemp paths would never hit), with the earlier run's contents moved away. Returns
 * where each old dir went, for tests that compare.
 */
export async function laterRun(dirs: string[]): Promise<string[]> {
  const moved: string[] = [];
  for (const dir of dirs) {
    const aside = `${dir}.earlier-${randomBytes(3).toString('hex')}`;
    if (existsSync(dir)) renameSync(dir, aside);
    mkdirSync(dir, { recursive: true });
    moved.push(aside);
  }
  return moved;
}

/** Resolves once the socket took `chunk` (true), or false if the connection closed first. */
function written(res: ServerResponse, chunk: Buffer): Promise<boolean> {
  return new Promise((resolve) => {
    const closed = () => resolve(false);
    res.once('close', closed);
    res.write(chunk, (error) => {
      res.off('close', closed);
      resolve(!error);
    });
  });
}
