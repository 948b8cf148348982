/**
 * A small forward proxy, as companies run in front of self-hosted runners: CONNECT tunnels (for https targets)
 * and absolute-form requests (`GET http://host/path`, for http targets), optionally asking for Basic proxy
 * credentials. Targets under `.proxytest` are mapped to 127.0.0.1: those names resolve nowhere else, so a client
 * that reaches such a target used the proxy. Counts what it carried per target, and can refuse on demand
 * (407/403/502). Not the fault relay of proxy.ts: that one stands in front of one registry as its address.
 */
import { createServer, request as httpRequest, type IncomingMessage, type Server } from 'node:http';
import { connect as netConnect, type AddressInfo, type Socket } from 'node:net';

/** The test domain that only this proxy resolves. */
export const PROXY_TEST_DOMAIN = 'proxytest';

export interface ProxyRecord {
  /** CONNECT for a tunnel, else the method of an absolute-form request. */
  method: string;
  /** host:port as the client named it. */
  target: string;
  /** Path of an absolute-form request ('' for a tunnel). */
  path: string;
  /** The request line's target as sent (the absolute URL, or host:port for CONNECT). */
  requestTarget: string;
  /** The request's Range header, if any (absolute-form only). */
  range?: string;
  /** Whether the client sent Proxy-Authorization (right or wrong). */
  proxyAuthorization: boolean;
  /** The status the proxy answered itself (refusals, 200 for an open tunnel); 0 when relayed. */
  status: number;
}

export interface ForwardProxyOptions {
  /** Require these Basic credentials (else 407). */
  user?: string;
  password?: string;
}

export interface ForwardProxy {
  /** http://127.0.0.1:port */
  url: string;
  /** http://user:password@127.0.0.1:port when credentials are required. */
  urlWithCredentials: string;
  records: ProxyRecord[];
  /** Answer every request with this status instead of carrying it (undefined: carry). */
  refuse: number | undefined;
  /** Close each CONNECT's connection without a word (a proxy that drops what it will not carry). */
  hangUp: boolean;
  /** Leave each CONNECT unanswered, its connection open. */
  silent: boolean;
  /** Sockets open now (to clients and to targets). */
  readonly connections: number;
  stop(): Promise<void>;
}

/** 127.0.0.1 for `*.proxytest`, the name itself otherwise. */
function resolveTarget(host: string): string {
  const bare = host.replace(/^\[|\]$/g, '');
  return bare === PROXY_TEST_DOMAIN || bare.endsWith(`.${PROXY_TEST_DOMAIN}`) ? '127.0.0.1' : bare;
}

function splitHostPort(target: string, defaultPort: number): { host: string; port: number } {
  const match = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(target);
  return { host: match?.[1] ?? target, port: Number(match?.[2] ?? defaultPort) };
}

export async function startForwardProxy(options: ForwardProxyOptions = {}): Promise<ForwardProxy> {
  const expected =
    options.user !== undefined
      ? `Basic ${Buffer.from(`${options.user}:${options.password ?? ''}`).toString('base64')}`
      : undefined;
  const sockets = new Set<Socket>();
  const records: ProxyRecord[] = [];
  const state = { refuse: undefined as number | undefined, hangUp: false, silent: false };

  const recordOf = (req: IncomingMessage, target: string, path: string): ProxyRecord => {
    const record: ProxyRecord = {
      method: req.method ?? '',
      target,
      path,
      requestTarget: req.url ?? '',
      range: req.headers.range,
      proxyAuthorization: req.headers['proxy-authorization'] !== undefined,
      status: 0,
    };
    records.push(record);
    return record;
  };

  /** The status to answer with instead of carrying the request, if any. */
  const refusal = (req: IncomingMessage): number | undefined => {
    if (state.refuse !== undefined) return state.refuse;
    if (expected && req.headers['proxy-authorization'] !== expected) return 407;
    return undefined;
  };
  const refusalHead = (status: number) =>
    `HTTP/1.1 ${status} ${status === 407 ? 'Proxy Authentication Required' : status === 403 ? 'Forbidden' : 'Bad Gateway'}\r\n` +
    (status === 407 ? 'Proxy-Authenticate: Basic realm="proxytest"\r\n' : '') +
    'Content-Length: 0\r\nConnection: close\r\n\r\n';

  const server: Server = createServer((req, res) => {
    // Absolute form: the target is in the request line.
    let url: URL;
    try {
      url = new URL(req.url ?? '');
    } catch {
      res.writeHead(400).end();
      return;
    }
    const record = recordOf(req, url.host, `${url.pathname}${url.search}`);
    const refused = refusal(req);
    if (refused !== undefined) {
      record.status = refused;
      req.resume();
      res
        .writeHead(refused, refused === 407 ? { 'proxy-authenticate': 'Basic realm="proxytest"' } : {})
        .end();
      return;
    }
    const headers = { ...req.headers };
    delete headers['proxy-authorization'];
    delete headers['proxy-connection'];
    const upstream = httpRequest(
      {
        host: resolveTarget(url.hostname),
        port: Number(url.port || 80),
        method: req.method,
        path: record.path,
        headers,
        // One connection per request: nothing of the proxy's outlives stop().
        agent: false,
        timeout: 30_000,
      },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    upstream.on('timeout', () => upstream.destroy(new Error('upstream timeout')));
    upstream.on('error', () => {
      if (!res.headersSent) res.writeHead(502).end();
      else res.destroy();
    });
    req.pipe(upstream);
  });

  server.on('connect', (req: IncomingMessage, client: Socket, head: Buffer) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => undefined);
    const record = recordOf(req, req.url ?? '', '');
    if (state.hangUp) {
      client.destroy();
      return;
    }
    if (state.silent) {
      // Reading, so the client's hang-up is seen (the server's sockets are half-open: close it then).
      client.on('end', () => client.destroy());
      client.resume();
      return;
    }
    const refused = refusal(req);
    if (refused !== undefined) {
      record.status = refused;
      client.end(refusalHead(refused));
      return;
    }
    const { host, port } = splitHostPort(req.url ?? '', 443);
    const upstream = netConnect({ host: resolveTarget(host), port });
    sockets.add(upstream);
    upstream.on('close', () => sockets.delete(upstream));
    upstream.on('error', () => {
      if (record.status === 0) {
        record.status = 502;
        client.end(refusalHead(502));
      } else client.destroy();
    });
    upstream.on('connect', () => {
      record.status = 200;
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length > 0) upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}`;
  const credentials =
    options.user !== undefined
      ? `${encodeURIComponent(options.user)}:${encodeURIComponent(options.password ?? '')}@`
      : '';
  return {
    url,
    urlWithCredentials: `http://${credentials}127.0.0.1:${port}`,
    records,
    get refuse() {
      return state.refuse;
    },
    set refuse(status: number | undefined) {
      state.refuse = status;
    },
    get hangUp() {
      return state.hangUp;
    },
    set hangUp(hangUp: boolean) {
      state.hangUp = hangUp;
    },
    get silent() {
      return state.silent;
    },
    set silent(silent: boolean) {
      state.silent = silent;
    },
    get connections() {
      return sockets.size;
    },
    async stop() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
