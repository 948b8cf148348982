/**
 * A counting HTTP relay in front of a registry, for a misbehaving world: records every request (method, kind,
 * repository, bytes each way, status) and, per request, can answer with any status itself (429/503 with
 * Retry-After, a 401 with a challenge), drop the connection part-way through a request or a response body,
 * lose the registry's answer to a request it applied (cut, or replaced by a gateway's 502/504),
 * throttle a response, answer with an endless body, corrupt a body, or rewrite response headers. Relay-level switches refuse
 * `Range` requests and stand in for registries with the OCI 1.1 multi-tag PUT (with a cap, or refusing `?tag=`)
 * or with the OCI 1.1 referrers API (which docker-registry 2.8 lacks).
 * The Host header is passed through, so the registry builds Location URLs that point back at the relay.
 */
import {
  createServer,
  request as httpRequest,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Readable } from 'node:stream';

export type RequestKind =
  | 'ping'
  | 'blob-head'
  | 'blob-get'
  | 'mount'
  | 'upload-start'
  | 'upload-chunk'
  | 'upload-put'
  | 'upload-status'
  | 'manifest-head'
  | 'manifest-get'
  | 'manifest-put'
  | 'referrers'
  | 'other';

export interface RequestRecord {
  method: string;
  kind: RequestKind;
  repository?: string;
  path: string;
  query: URLSearchParams;
  /** Request body bytes that crossed the relay (also counted when the connection was dropped). */
  bytesUp: number;
  /** Response body bytes the relay wrote towards the client. */
  bytesDown: number;
  /** The status the client saw; 0 when the relay dropped the connection before answering. */
  status: number;
  /** Whether the request carried an Authorization header (which credentials reach which origin). */
  authorized: boolean;
  fault?: Fault;
  /** When the request arrived (performance.now()): the wait a client kept between two tries. */
  arrivedAt: number;
}

export type Fault =
  /**
   * Answer with this status without asking the registry (the request body is read and counted first); `body`
   * stands in for the relay's own error JSON (a hostile registry's answer: any manifest, any referrers list).
   */
  | {
      status: number;
      retryAfterSeconds?: number;
      /** A list is sent as that many header lines (a header two proxies on the way each added). */
      headers?: Record<string, string | string[]>;
      body?: string | Buffer;
      /** Send the body at this many bytes per second, in tenths of a second (a page that trickles). */
      trickleBytesPerSecond?: number;
    }
  /** Cut the connection once half of the request body has arrived. */
  | { drop: 'mid-body' }
  /** Relay the registry's answer but cut the connection after this many body bytes. */
  | { drop: 'mid-response'; afterBytes: number }
  /** Relay the registry's answer at this many body bytes per second, in tenths of a second. */
  | { throttleBytesPerSecond: number }
  /** Pass the request body on at this many bytes per second, in tenths of a second (a slow uplink). */
  | { throttleUpBytesPerSecond: number }
  /**
   * Hold the registry's answer this long before relaying it: a registry still verifying and moving a blob
   * in its storage after the last byte (or committing a manifest slowly).
   */
  | { answerDelayMs: number }
  /** Answer 200 with zeros until the client gives up (bounded at 1 GiB so the relay stops by itself). */
  | { endless: true }
  /** Relay the registry's answer with the first body byte flipped (content that does not match its digest). */
  | { corrupt: true }
  /**
   * The registry gets the whole request and answers it, and that answer is lost on the way back: the relay
   * cuts the connection instead (`'drop'`), or answers this status itself (a load balancer's 502/504), with
   * Retry-After when given. A write is then applied though the client never hears so. Also for the multi-tag
   * PUTs the relay answers itself (`multiTag`): the tags are stored, the answer lost.
   */
  | LostAnswer;

type LostAnswer = {
  lostAnswer: 'drop' | number;
  retryAfterSeconds?: number;
  /** Runs once the registry has answered, before the answer is lost: another client's write in between. */
  meanwhile?: () => Promise<void>;
};

export interface ProxyOptions {
  /** host:port of the registry. */
  target: string;
  /** Where the relay listens (default 127.0.0.1 on a free port): e.g. ::1, or a scheme's default port. */
  listen?: { host?: string; port?: number };
  /** Added before forwarding a request and again before relaying the response. */
  latencyMs?: number;
  /** Decides per request whether to inject a fault; `index` counts requests of that kind so far (from 0). */
  fault?: (request: {
    method: string;
    kind: RequestKind;
    repository?: string;
    index: number;
    contentLength: number;
    query: URLSearchParams;
    /** The last path component: a manifest's digest or tag, a blob's digest. */
    reference: string;
  }) => Fault | undefined;
  /**
   * Act as a registry with the OCI 1.1 multi-tag PUT (`PUT .../manifests/<digest>?tag=a&tag=b`, answered with
   * OCI-Tag), which docker-registry 2.8 lacks: the relay stores each tag upstream itself. `cap` answers 414
   * above that many tags (as zot does above 46); `joined` sends one comma-joined OCI-Tag header instead of one
   * header per tag; `confirm` picks the tags OCI-Tag names (a registry that confirms fewer, or others).
   */
  multiTag?: boolean | { cap?: number; joined?: boolean; confirm?: (asked: string[]) => string[] };
  /**
   * Act as a registry with the OCI 1.1 referrers API: manifest PUTs with a `subject` are indexed by the relay
   * (and answered with OCI-Subject), and `GET /v2/<name>/referrers/<digest>` is answered from that index.
   * Without it the relay passes the request on and docker-registry answers 404 (no API).
   */
  referrersApi?: boolean;
  /** Answer this status to any manifest PUT carrying `tag` query parameters (a registry refusing them). */
  refuseTagQuery?: number;
  /** Strip `Range` from requests and `Accept-Ranges` from answers: a registry without range support. */
  noRanges?: boolean;
  /** Rewrites the headers of the registry's answers (e.g. the WWW-Authenticate challenge). */
  mapResponseHeaders?: (kind: RequestKind, headers: IncomingHttpHeaders) => IncomingHttpHeaders;
  /** Holds a request (before anything else is done with it) until the promise it returns settles. */
  hold?: (record: RequestRecord) => Promise<void> | undefined;
}

export interface CountingProxy {
  host: string;
  records: RequestRecord[];
  /** Request body bytes sent through the relay. */
  bytesUp(): number;
  count(kind: RequestKind, filter?: (r: RequestRecord) => boolean): number;
  reset(): void;
  stop(): Promise<void>;
}

export function classify(
  method: string,
  path: string,
  query: URLSearchParams,
): { kind: RequestKind; repository?: string } {
  if (path === '/v2/' || path === '/v2') return { kind: 'ping' };
  const upload = /^\/v2\/(.+)\/blobs\/uploads\/?(.*)$/.exec(path);
  if (upload) {
    const repository = upload[1];
    if (method === 'POST') return { kind: query.has('mount') ? 'mount' : 'upload-start', repository };
    if (method === 'PATCH') return { kind: 'upload-chunk', repository };
    if (method === 'PUT') return { kind: 'upload-put', repository };
    if (method === 'GET') return { kind: 'upload-status', repository };
    return { kind: 'other', repository };
  }
  const blob = /^\/v2\/(.+)\/blobs\/([^/]+)$/.exec(path);
  if (blob) {
    if (method === 'HEAD') return { kind: 'blob-head', repository: blob[1] };
    if (method === 'GET') return { kind: 'blob-get', repository: blob[1] };
  }
  const referrers = /^\/v2\/(.+)\/referrers\/([^/]+)$/.exec(path);
  if (referrers && method === 'GET') return { kind: 'referrers', repository: referrers[1] };
  const manifest = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(path);
  if (manifest) {
    if (method === 'HEAD') return { kind: 'manifest-head', repository: manifest[1] };
    if (method === 'GET') return { kind: 'manifest-get', repository: manifest[1] };
    if (method === 'PUT') return { kind: 'manifest-put', repository: manifest[1] };
  }
  return { kind: 'other' };
}

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export async function startProxy(options: ProxyOptions): Promise<CountingProxy> {
  const [targetHost, targetPort] = options.target.split(':');
  const latency = options.latencyMs ?? 0;
  const records: RequestRecord[] = [];
  const kindCounts = new Map<RequestKind, number>();
  /** `<repository>@<subject digest>` -> referrer descriptors, for the referrers API double. */
  const referrerIndex = new Map<string, object[]>();

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://relay');
    const { kind, repository } = classify(req.method ?? 'GET', url.pathname, url.searchParams);
    const index = kindCounts.get(kind) ?? 0;
    kindCounts.set(kind, index + 1);
    const contentLength = Number(req.headers['content-length'] ?? '0');
    const record: RequestRecord = {
      method: req.method ?? 'GET',
      kind,
      repository,
      path: url.pathname,
      query: url.searchParams,
      bytesUp: 0,
      bytesDown: 0,
      status: 0,
      authorized: req.headers.authorization !== undefined,
      arrivedAt: performance.now(),
    };
    records.push(record);
    const fault = options.fault?.({
      method: record.method,
      kind,
      repository,
      index,
      contentLength,
      query: url.searchParams,
      reference: url.pathname.slice(url.pathname.lastIndexOf('/') + 1),
    });
    if (fault) record.fault = fault;
    await options.hold?.(record);
    // Counted in each branch at the moment the body is consumed: a 'data' listener set earlier would start the
    // flow before the upstream pipe exists and lose the first chunks.
    const countUp = (chunk: Buffer) => (record.bytesUp += chunk.length);

    if (fault && 'drop' in fault && fault.drop === 'mid-body') {
      // Forward nothing; cut the client off once part of the body has arrived, as a broken link would.
      const cut = Math.max(1, Math.floor(contentLength / 2));
      req.on('data', (chunk: Buffer) => {
        countUp(chunk);
        if (record.bytesUp >= cut) req.socket.destroy();
      });
      if (contentLength === 0) req.socket.destroy();
      return;
    }
    await delay(latency);
    const tagged = kind === 'manifest-put' && url.searchParams.has('tag');
    const answer = (
      status: number,
      headers: Record<string, string | string[]> = {},
      body?: string | Buffer,
      trickleBytesPerSecond?: number,
    ) =>
      consume(req, countUp).then(async () => {
        record.status = status;
        const sent =
          body ?? `{"errors":[{"code":"INJECTED","message":"HTTP ${status} injected by test relay"}]}`;
        res.writeHead(status, { 'content-type': 'application/json', ...headers });
        if (trickleBytesPerSecond === undefined) return void res.end(sent);
        res.flushHeaders();
        await throttle([Buffer.from(sent)], res, record, trickleBytesPerSecond);
      });
    // An injected status comes first, also for the requests the doubles below would answer themselves.
    if (fault && 'status' in fault) {
      await delay(latency);
      const headers = { ...fault.headers };
      if (fault.retryAfterSeconds !== undefined) headers['retry-after'] = String(fault.retryAfterSeconds);
      return answer(fault.status, headers, fault.body, fault.trickleBytesPerSecond);
    }
    if (tagged && options.refuseTagQuery) return answer(options.refuseTagQuery);
    if (tagged && options.multiTag) {
      await relayMultiTag(
        req,
        res,
        url,
        record,
        options.target,
        options.multiTag === true ? {} : options.multiTag,
        fault && 'lostAnswer' in fault ? fault : undefined,
      );
      return;
    }
    if (options.referrersApi && kind === 'referrers' && !fault) {
      await consume(req, countUp);
      const digest = url.pathname.slice(url.pathname.lastIndexOf('/') + 1);
      const body = JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.index.v1+json',
        manifests: referrerIndex.get(`${repository}@${digest}`) ?? [],
      });
      await delay(latency);
      record.status = 200;
      record.bytesDown += body.length;
      res.writeHead(200, { 'content-type': 'application/vnd.oci.image.index.v1+json' }).end(body);
      return;
    }
    if (options.referrersApi && kind === 'manifest-put' && !fault) {
      await relayReferrer(req, res, url, record, options.target, latency, (subject, descriptor) => {
        const key = `${repository}@${subject}`;
        const list = (referrerIndex.get(key) ?? []).filter(
          (d) => (d as { digest: string }).digest !== (descriptor as { digest: string }).digest,
        );
        referrerIndex.set(key, [...list, descriptor]);
      });
      return;
    }
    if (fault && 'endless' in fault) {
      await consume(req, countUp);
      record.status = 200;
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      await writeEndless(res, record);
      return;
    }
    const headers = { ...req.headers };
    if (options.noRanges) delete headers.range;
    const upstream = httpRequest(
      { host: targetHost, port: Number(targetPort), method: req.method, path: req.url, headers },
      (upstreamRes) => {
        void delay(latency + (fault && 'answerDelayMs' in fault ? fault.answerDelayMs : 0)).then(async () => {
          if (fault && 'lostAnswer' in fault) return loseAnswer(upstreamRes, res, record, fault);
          record.status = upstreamRes.statusCode ?? 0;
          let answerHeaders = { ...upstreamRes.headers };
          if (options.noRanges) delete answerHeaders['accept-ranges'];
          if (options.mapResponseHeaders) answerHeaders = options.mapResponseHeaders(kind, answerHeaders);
          res.writeHead(upstreamRes.statusCode ?? 502, answerHeaders);
          if (fault && 'drop' in fault) return cutResponse(upstreamRes, res, record, fault.afterBytes);
          if (fault && 'corrupt' in fault) return flipFirstByte(upstreamRes, res, record);
          if (fault && 'throttleBytesPerSecond' in fault) {
            return throttle(upstreamRes, res, record, fault.throttleBytesPerSecond);
          }
          upstreamRes.on('data', (chunk: Buffer) => (record.bytesDown += chunk.length));
          upstreamRes.pipe(res);
        });
      },
    );
    upstream.on('error', () => res.destroy());
    if (fault && 'throttleUpBytesPerSecond' in fault) {
      void throttleUp(req, upstream, record, fault.throttleUpBytesPerSecond);
      return;
    }
    req.on('data', countUp);
    req.pipe(upstream);
  };

  const server: Server = createServer((req, res) => void handle(req, res));
  const listenHost = options.listen?.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.listen?.port ?? 0, listenHost, resolve);
  });
  const { port } = server.address() as AddressInfo;
  return {
    host: `${listenHost.includes(':') ? `[${listenHost}]` : listenHost}:${port}`,
    records,
    bytesUp: () => records.reduce((n, r) => n + r.bytesUp, 0),
    count: (kind, filter) => records.filter((r) => r.kind === kind && (!filter || filter(r))).length,
    reset() {
      records.length = 0;
      kindCounts.clear();
    },
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

async function consume(req: IncomingMessage, count: (chunk: Buffer) => void): Promise<void> {
  for await (const chunk of req) count(chunk as Buffer);
}

async function writeAll(res: ServerResponse, record: RequestRecord, chunk: Buffer): Promise<boolean> {
  if (res.destroyed) return false;
  record.bytesDown += chunk.length;
  if (!res.write(chunk)) {
    await new Promise<void>((resolve) => {
      res.once('drain', resolve);
      res.once('close', resolve);
    });
  }
  return !res.destroyed;
}

/** The registry's whole answer read and thrown away; the client gets no answer, or the relay's own status. */
async function loseAnswer(
  from: Readable,
  res: ServerResponse,
  record: RequestRecord,
  fault: LostAnswer,
): Promise<void> {
  for await (const _ of from);
  await fault.meanwhile?.();
  answerLost(res, record, fault);
}

/** In place of an answer the registry gave: the connection cut, or the gateway's own status. */
function answerLost(res: ServerResponse, record: RequestRecord, fault: LostAnswer): void {
  if (fault.lostAnswer === 'drop') return void res.socket?.destroy();
  record.status = fault.lostAnswer;
  const headers: Record<string, string> = { 'content-type': 'text/html' };
  if (fault.retryAfterSeconds !== undefined) headers['retry-after'] = String(fault.retryAfterSeconds);
  res
    .writeHead(fault.lostAnswer, headers)
    .end(`<html><title>${fault.lostAnswer} Gateway Error</title></html>`);
}

async function writeEndless(res: ServerResponse, record: RequestRecord): Promise<void> {
  const zeros = Buffer.alloc(64 * 1024);
  while (record.bytesDown < 1024 ** 3 && (await writeAll(res, record, zeros)));
  res.end();
}

async function cutResponse(
  from: Readable,
  res: ServerResponse,
  record: RequestRecord,
  afterBytes: number,
): Promise<void> {
  for await (const chunk of from) {
    const room = afterBytes - record.bytesDown;
    await writeAll(res, record, (chunk as Buffer).subarray(0, Math.max(0, room)));
    if (record.bytesDown >= afterBytes) break;
  }
  // Let the bytes written so far reach the client, then break the connection as a failing link would.
  res.socket?.end(() => res.socket?.destroy());
  setTimeout(() => res.socket?.destroy(), 50).unref();
  from.destroy();
}

async function flipFirstByte(from: Readable, res: ServerResponse, record: RequestRecord): Promise<void> {
  let flipped = false;
  for await (const chunk of from) {
    const copy = Buffer.from(chunk as Buffer);
    if (!flipped && copy.length > 0) {
      copy[0]! ^= 0xff;
      flipped = true;
    }
    if (!(await writeAll(res, record, copy))) return;
  }
  res.end();
}

async function throttle(
  from: Readable | Iterable<Buffer>,
  res: ServerResponse,
  record: RequestRecord,
  bytesPerSecond: number,
): Promise<void> {
  const slice = Math.max(1, Math.floor(bytesPerSecond / 10));
  for await (const chunk of from) {
    for (let at = 0; at < (chunk as Buffer).length; at += slice) {
      if (!(await writeAll(res, record, (chunk as Buffer).subarray(at, at + slice)))) {
        if ('destroy' in from) from.destroy();
        return;
      }
      await delay(100);
    }
  }
  res.end();
}

/** A request body passed on at `bytesPerSecond` on average; the client's writes wait as on a slow uplink. */
async function throttleUp(
  from: IncomingMessage,
  to: ReturnType<typeof httpRequest>,
  record: RequestRecord,
  bytesPerSecond: number,
): Promise<void> {
  const started = Date.now();
  try {
    for await (const chunk of from) {
      record.bytesUp += (chunk as Buffer).length;
      if (!to.write(chunk)) {
        await new Promise((resolve) => {
          to.once('drain', resolve);
          to.once('close', resolve);
        });
      }
      if (to.destroyed) return;
      // Socket reads are at most 64 KiB: pacing whole reads keeps the average without slicing them.
      await delay(started + (record.bytesUp / bytesPerSecond) * 1000 - Date.now());
    }
    to.end();
  } catch {
    to.destroy();
  }
}

async function relayMultiTag(
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  record: RequestRecord,
  target: string,
  options: { cap?: number; joined?: boolean; confirm?: (asked: string[]) => string[] },
  lost: LostAnswer | undefined,
): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) {
    chunks.push(chunk as Buffer);
    record.bytesUp += (chunk as Buffer).length;
  }
  const tags = url.searchParams.getAll('tag');
  if (options.cap !== undefined && tags.length > options.cap) {
    record.status = 414;
    res.writeHead(414).end();
    return;
  }
  const body = Buffer.concat(chunks);
  const headers: Record<string, string> = { 'content-type': req.headers['content-type'] ?? '' };
  if (req.headers.authorization) headers.authorization = req.headers.authorization;
  const repoPath = url.pathname.slice(0, url.pathname.lastIndexOf('/') + 1);
  const responses = await Promise.all(
    [url.pathname, ...tags.map((t) => repoPath + t)].map((path) =>
      fetch(`http://${target}${path}`, { method: 'PUT', headers, body }),
    ),
  );
  const first = responses[0]!;
  for (const r of responses) await r.arrayBuffer();
  const failed = responses.find((r) => !r.ok);
  if (lost) {
    await lost.meanwhile?.();
    return answerLost(res, record, lost);
  }
  record.status = failed?.status ?? first.status;
  if (failed) {
    // The registry's challenge goes with a 401, as a registry with the extension would send its own.
    const challenge = failed.headers.get('www-authenticate');
    res.writeHead(failed.status, challenge ? { 'www-authenticate': challenge } : {}).end();
    return;
  }
  const confirmed = options.confirm ? options.confirm(tags) : tags;
  res.writeHead(201, {
    'docker-content-digest': first.headers.get('docker-content-digest') ?? '',
    location: first.headers.get('location') ?? url.pathname,
    'oci-tag': options.joined ? confirmed.join(', ') : confirmed,
  });
  res.end();
}

/**
 * A manifest PUT through the referrers API double: relayed to the registry; when it is stored and carries a
 * `subject`, indexed as a referrer (artifactType, else the config's media type; annotations) and answered with
 * OCI-Subject, as a registry with the API must.
 */
async function relayReferrer(
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  record: RequestRecord,
  target: string,
  latency: number,
  index: (subject: string, descriptor: object) => void,
): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) {
    chunks.push(chunk as Buffer);
    record.bytesUp += (chunk as Buffer).length;
  }
  const body = Buffer.concat(chunks);
  const headers: Record<string, string> = { 'content-type': req.headers['content-type'] ?? '' };
  if (req.headers.authorization) headers.authorization = req.headers.authorization;
  const upstream = await fetch(`http://${target}${url.pathname}${url.search}`, {
    method: 'PUT',
    headers,
    body,
  });
  const answer = Buffer.from(await upstream.arrayBuffer());
  const out: Record<string, string> = {};
  upstream.headers.forEach((value, name) => {
    if (!['content-length', 'transfer-encoding', 'connection'].includes(name)) out[name] = value;
  });
  if (upstream.ok) {
    const manifest = JSON.parse(body.toString('utf8')) as {
      mediaType?: string;
      artifactType?: string;
      config?: { mediaType?: string };
      subject?: { digest?: string };
      annotations?: Record<string, string>;
    };
    const subject = manifest.subject?.digest;
    if (subject) {
      index(subject, {
        mediaType: manifest.mediaType ?? req.headers['content-type'],
        digest: upstream.headers.get('docker-content-digest'),
        size: body.length,
        artifactType: manifest.artifactType ?? manifest.config?.mediaType,
        ...(manifest.annotations ? { annotations: manifest.annotations } : {}),
      });
      out['oci-subject'] = subject;
    }
  }
  await delay(latency);
  record.status = upstream.status;
  res.writeHead(upstream.status, out).end(answer);
}
