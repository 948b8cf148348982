/**
 * A counting HTTP relay in front of a registry: records every request (method, kind, repository, bytes up,
 * status), can add latency each way (a WAN on loopback), answer some requests with 429/503 itself, or drop
 * the connection part-way through an upload body. The Host header is passed through, so the registry builds
 * Location URLs that point back at the relay.
 */
import {
  createServer,
  request as httpRequest,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';

export type RequestKind =
  | 'ping'
  | 'blob-head'
  | 'blob-get'
  | 'mount'
  | 'upload-start'
  | 'upload-chunk'
  | 'upload-put'
  | 'manifest-head'
  | 'manifest-get'
  | 'manifest-put'
  | 'other';

export interface RequestRecord {
  method: string;
  kind: RequestKind;
  repository?: string;
  path: string;
  /** Request body bytes that crossed the relay (also counted when the connection was dropped). */
  bytesUp: number;
  bytesDown: number;
  /** The status the client saw; 0 when the relay dropped the connection. */
  status: number;
  fault?: Fault;
}

export type Fault = { status: 429 | 503; retryAfterSeconds?: number } | { drop: 'mid-body' };

export interface ProxyOptions {
  /** host:port of the registry. */
  target: string;
  /** Added before forwarding a request and again before relaying the response. */
  latencyMs?: number;
  /** Decides per request whether to inject a fault; `index` counts requests of that kind so far (from 0). */
  fault?: (request: {
    method: string;
    kind: RequestKind;
    index: number;
    contentLength: number;
  }) => Fault | undefined;
  /**
   * Act as a registry with the OCI 1.1 multi-tag PUT (`PUT .../manifests/<digest>?tag=a&tag=b`, answered with
   * one OCI-Tag header per tag), which docker-registry 2.8 lacks: the relay stores each tag upstream itself.
   */
  multiTag?: boolean;
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
    return { kind: 'other', repository };
  }
  const blob = /^\/v2\/(.+)\/blobs\/([^/]+)$/.exec(path);
  if (blob) {
    if (method === 'HEAD') return { kind: 'blob-head', repository: blob[1] };
    if (method === 'GET') return { kind: 'blob-get', repository: blob[1] };
  }
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
      bytesUp: 0,
      bytesDown: 0,
      status: 0,
    };
    records.push(record);
    const fault = options.fault?.({ method: record.method, kind, index, contentLength });
    if (fault) record.fault = fault;
    // Counted in each branch at the moment the body is consumed: a 'data' listener set earlier would start the
    // flow before the upstream pipe exists and lose the first chunks.
    const countUp = (chunk: Buffer) => (record.bytesUp += chunk.length);

    if (fault && 'drop' in fault) {
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
    if (options.multiTag && kind === 'manifest-put' && url.searchParams.has('tag')) {
      await relayMultiTag(req, res, url, record, options.target);
      return;
    }
    if (fault) {
      req.on('data', countUp);
      await new Promise((resolve) => req.on('end', resolve));
      await delay(latency);
      record.status = fault.status;
      const headers: Record<string, string> = { 'content-type': 'application/json' };
      if (fault.retryAfterSeconds !== undefined) headers['retry-after'] = String(fault.retryAfterSeconds);
      res
        .writeHead(fault.status, headers)
        .end('{"errors":[{"code":"TOOMANYREQUESTS","message":"injected by test relay"}]}');
      return;
    }
    const upstream = httpRequest(
      { host: targetHost, port: Number(targetPort), method: req.method, path: req.url, headers: req.headers },
      (upstreamRes) => {
        void delay(latency).then(() => {
          record.status = upstreamRes.statusCode ?? 0;
          res.writeHead(upstreamRes.statusCode ?? 502, upstreamRes.headers);
          upstreamRes.on('data', (chunk: Buffer) => (record.bytesDown += chunk.length));
          upstreamRes.pipe(res);
        });
      },
    );
    upstream.on('error', () => res.destroy());
    req.on('data', countUp);
    req.pipe(upstream);
  };

  const server: Server = createServer((req, res) => void handle(req, res));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    host: `127.0.0.1:${port}`,
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

async function relayMultiTag(
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  record: RequestRecord,
  target: string,
): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) {
    chunks.push(chunk as Buffer);
    record.bytesUp += (chunk as Buffer).length;
  }
  const body = Buffer.concat(chunks);
  const headers: Record<string, string> = { 'content-type': req.headers['content-type'] ?? '' };
  if (req.headers.authorization) headers.authorization = req.headers.authorization;
  const repoPath = url.pathname.slice(0, url.pathname.lastIndexOf('/') + 1);
  const tags = url.searchParams.getAll('tag');
  const responses = await Promise.all(
    [url.pathname, ...tags.map((t) => repoPath + t)].map((path) =>
      fetch(`http://${target}${path}`, { method: 'PUT', headers, body }),
    ),
  );
  const first = responses[0]!;
  for (const r of responses) await r.arrayBuffer();
  const failed = responses.find((r) => !r.ok);
  record.status = failed?.status ?? first.status;
  if (failed) {
    res.writeHead(failed.status).end();
    return;
  }
  res.writeHead(201, {
    'docker-content-digest': first.headers.get('docker-content-digest') ?? '',
    location: first.headers.get('location') ?? url.pathname,
    'oci-tag': tags,
  });
  res.end();
}
