/**
 * Real registries for tests: `docker-registry serve <config>` (Debian's distribution 2.8) on a free 127.0.0.1
 * port with storage in a temp dir, either open, with htpasswd basic auth, or with token auth backed by a small
 * token server that signs real RS256 JWTs the registry verifies (certificate made with openssl at start). The
 * token server also takes OAuth2 refresh-token grants (POST), for identity tokens. Optionally over https with a
 * CA made by the test, and then optionally requiring a client certificate signed by that CA.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, createSign, randomBytes, X509Certificate } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestCa, type TestCa } from './test-ca.js';

export type RegistryAuth = 'none' | 'htpasswd' | 'token';

export interface RegistryOptions {
  auth?: RegistryAuth;
  username?: string;
  password?: string;
  /** Token auth: more users (name -> password) whose tokens grant `pull` only, whatever they ask for. */
  pullOnlyUsers?: Record<string, string>;
  /**
   * Token auth: sees every token request first; returning true means it answered (a token server that fails,
   * hangs or answers HTML). Requests it takes are still recorded in `tokenRequests`.
   */
  tokenHook?: (req: IncomingMessage, res: ServerResponse) => boolean;
  /** Token auth: identity tokens (OAuth2 refresh tokens) the token server accepts, each for `username`. */
  identityTokens?: string[];
  /** Serve https with a certificate from a CA made for this registry; `client-cert` also requires one. */
  tls?: 'server' | 'client-cert';
  /**
   * A host name the registry and its token server are reached by through a test forward proxy
   * (forward-proxy.ts): in the server certificate, and as the token realm's host, so token fetches go there too.
   */
  proxiedName?: string;
}

export interface TokenRequest {
  user?: string;
  scopes: string[];
  /** How the token was asked for: docker's GET with Basic credentials, or an OAuth2 refresh-token grant. */
  grant?: 'basic' | 'refresh_token';
}

export interface RegistryService {
  /** 127.0.0.1:<port>, usable as an image reference host. */
  host: string;
  url: string;
  auth: RegistryAuth;
  username?: string;
  password?: string;
  dir: string;
  /** Every token the token server was asked for (token auth only). */
  tokenRequests: TokenRequest[];
  /** The registry's WWW-Authenticate challenge (token auth only), for relays that answer 401 themselves. */
  challenge?: string;
  /** The CA (and server/client certificates) of an https registry. */
  ca?: TestCa;
  /** The registry's log so far (access log lines included). */
  log(): string;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createNetServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export async function startRegistry(options: RegistryOptions = {}): Promise<RegistryService> {
  const auth = options.auth ?? 'none';
  const username = auth === 'none' ? undefined : (options.username ?? 'tester');
  const password = auth === 'none' ? undefined : (options.password ?? `pw-${randomBytes(6).toString('hex')}`);
  const dir = mkdtempSync(join(tmpdir(), 'ici-reg-'));
  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  const tokenRequests: TokenRequest[] = [];
  let tokenServer: Server | undefined;
  const ca = options.tls
    ? makeTestCa(dir, `ici-test ${port}`, options.proxiedName ? [options.proxiedName] : [])
    : undefined;
  const realmHost = options.proxiedName ?? '127.0.0.1';
  let authConfig = '';
  let challenge: string | undefined;
  if (auth === 'htpasswd') {
    const line = execFileSync('htpasswd', ['-Bbn', username!, password!], { encoding: 'utf8' });
    writeFileSync(join(dir, 'htpasswd'), line.trim() + '\n');
    authConfig = `auth:\n  htpasswd:\n    realm: test-realm\n    path: ${join(dir, 'htpasswd')}\n`;
  } else if (auth === 'token') {
    const signer = makeSigner(dir);
    const tokenPort = await freePort();
    tokenServer = await startTokenServer(tokenPort, signer, tokenRequests, {
      users: { [username!]: password! },
      pullOnlyUsers: options.pullOnlyUsers ?? {},
      identityTokens: Object.fromEntries((options.identityTokens ?? []).map((t) => [t, username!])),
      hook: options.tokenHook,
    });
    challenge = `Bearer realm="http://${realmHost}:${tokenPort}/token",service="${TOKEN_SERVICE}"`;
    authConfig =
      `auth:\n  token:\n    realm: http://${realmHost}:${tokenPort}/token\n    service: ${TOKEN_SERVICE}\n` +
      `    issuer: ${TOKEN_ISSUER}\n    rootcertbundle: ${signer.certPath}\n`;
  }
  const config =
    `version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n` +
    `storage:\n  filesystem:\n    rootdirectory: ${join(dir, 'data')}\n  delete:\n    enabled: true\n` +
    `http:\n  addr: ${host}\n  secret: ${randomBytes(16).toString('hex')}\n${ca ? tlsConfig(ca, options.tls!) : ''}${authConfig}`;
  const configPath = join(dir, 'config.yml');
  writeFileSync(configPath, config);

  const logChunks: string[] = [];
  const child = spawn('docker-registry', ['serve', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.on('data', (c: Buffer) => logChunks.push(c.toString('utf8')));
  child.stderr.on('data', (c: Buffer) => logChunks.push(c.toString('utf8')));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    await waitForHttp(`${ca ? 'https' : 'http'}://${host}/v2/`, child, () => logChunks.join(''), ca);
  } catch (error) {
    await stopChild(child, exited);
    tokenServer?.close();
    throw error;
  }
  return {
    host,
    url: `${ca ? 'https' : 'http'}://${host}`,
    auth,
    ca,
    username,
    password,
    dir,
    tokenRequests,
    challenge,
    log: () => logChunks.join(''),
    async stop() {
      await stopChild(child, exited);
      if (tokenServer) await new Promise<void>((resolve) => tokenServer.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function stopChild(child: ChildProcess, exited: Promise<void>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

function tlsConfig(ca: TestCa, mode: 'server' | 'client-cert'): string {
  const clientCas = mode === 'client-cert' ? `    clientcas:\n      - ${ca.caCert}\n` : '';
  return `  tls:\n    certificate: ${ca.serverCert}\n    key: ${ca.serverKey}\n${clientCas}`;
}

/** One GET over https trusting the test CA (and showing its client certificate); resolves on any answer. */
function httpsAnswer(url: string, ca: TestCa): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      url,
      {
        ca: readFileSync(ca.caCert),
        cert: readFileSync(ca.clientCert),
        key: readFileSync(ca.clientKey),
        timeout: 2000,
      },
      (res) => {
        res.resume();
        res.on('end', resolve);
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

async function waitForHttp(url: string, child: ChildProcess, log: () => string, ca?: TestCa): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`docker-registry exited early:\n${log()}`);
    try {
      if (ca) {
        await httpsAnswer(url, ca);
        return;
      }
      const response = await fetch(url, { signal: AbortSignal.timeout(2000) });
      await response.arrayBuffer();
      return;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  throw new Error(`docker-registry did not answer on ${url} within 20 s:\n${log()}`);
}

// ---- token auth ----

const TOKEN_SERVICE = 'ici-test-registry';
const TOKEN_ISSUER = 'ici-test-token-server';

interface Signer {
  certPath: string;
  sign(claims: object): string;
}

function base64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url');
}

/** A self-signed RSA certificate (openssl) whose key signs the tokens; the registry trusts the certificate. */
function makeSigner(dir: string): Signer {
  const keyPath = join(dir, 'token.key');
  const certPath = join(dir, 'token.crt');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-subj',
      '/CN=ici-test-token',
      '-keyout',
      keyPath,
      '-out',
      certPath,
      '-days',
      '1',
    ],
    { stdio: 'ignore', input: '', env: { ...process.env }, timeout: 30_000 },
  );
  const key = readFileSync(keyPath, 'utf8');
  const der = new X509Certificate(readFileSync(certPath)).raw;
  const header = base64url(JSON.stringify({ alg: 'RS256', typ: 'JWT', x5c: [der.toString('base64')] }));
  return {
    certPath,
    sign(claims) {
      const payload = `${header}.${base64url(JSON.stringify(claims))}`;
      const signature = createSign('RSA-SHA256').update(payload).sign(key);
      return `${payload}.${base64url(signature)}`;
    },
  };
}

async function startTokenServer(
  port: number,
  signer: Signer,
  requests: TokenRequest[],
  options: {
    users: Record<string, string>;
    pullOnlyUsers: Record<string, string>;
    /** refresh token -> user */
    identityTokens: Record<string, string>;
    hook?: (req: IncomingMessage, res: ServerResponse) => boolean;
  },
): Promise<Server> {
  const users = { ...options.users, ...options.pullOnlyUsers };
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    if (req.method === 'POST') {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () =>
        refreshGrant(req, res, new URLSearchParams(Buffer.concat(chunks).toString('utf8'))),
      );
      return;
    }
    const url = new URL(req.url ?? '/', 'http://token');
    const scopes = url.searchParams.getAll('scope');
    if (options.hook?.(req, res)) {
      requests.push({ scopes });
      return;
    }
    let user: string | undefined;
    const header = req.headers.authorization ?? '';
    if (header.startsWith('Basic ')) {
      const decoded = Buffer.from(header.slice(6), 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      const name = decoded.slice(0, colon);
      if (users[name] === undefined || users[name] !== decoded.slice(colon + 1)) {
        res.writeHead(401, { 'content-type': 'application/json' }).end('{"details":"bad credentials"}');
        return;
      }
      user = name;
    }
    requests.push({ user, scopes, grant: 'basic' });
    if (!user) {
      res.writeHead(401, { 'content-type': 'application/json' }).end('{"details":"login required"}');
      return;
    }
    grant(res, user, scopes, url.searchParams.get('service'));
  });

  /** docker's OAuth2 flow for identity tokens: grant_type=refresh_token, scopes in the form (repeated). */
  function refreshGrant(req: IncomingMessage, res: ServerResponse, form: URLSearchParams): void {
    const scopes = form.getAll('scope').flatMap((s) => s.split(' ').filter(Boolean));
    const user = options.identityTokens[form.get('refresh_token') ?? ''];
    requests.push({ user, scopes, grant: 'refresh_token' });
    const contentType = req.headers['content-type'] ?? '';
    if (
      form.get('grant_type') !== 'refresh_token' ||
      !contentType.startsWith('application/x-www-form-urlencoded')
    ) {
      res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"unsupported_grant_type"}');
      return;
    }
    if (!user) {
      res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"invalid_grant"}');
      return;
    }
    grant(res, user, scopes, form.get('service'));
  }

  function grant(res: ServerResponse, user: string, scopes: string[], service: string | null): void {
    // As token servers do: the token grants what the user may do of what was asked, not more.
    const pullOnly = user in options.pullOnlyUsers;
    const access = scopes.map((scope) => {
      const [type, ...rest] = scope.split(':');
      const actions = (rest.pop() ?? '').split(',').filter((a) => a && (!pullOnly || a === 'pull'));
      return { type, name: rest.join(':'), actions };
    });
    const now = Math.floor(Date.now() / 1000);
    const token = signer.sign({
      iss: TOKEN_ISSUER,
      aud: service ?? TOKEN_SERVICE,
      sub: user,
      exp: now + 300,
      nbf: now - 10,
      iat: now,
      jti: randomBytes(8).toString('hex'),
      access,
    });
    res
      .writeHead(200, { 'content-type': 'application/json' })
      .end(JSON.stringify({ token, access_token: token, expires_in: 300 }));
  }
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return server;
}

/** Every file under a registry's storage, with its content hash: equal before and after means untouched. */
export function storageFingerprint(registry: Pick<RegistryService, 'dir'>): string {
  const hash = createHash('sha256');
  const walk = (path: string) => {
    for (const entry of readdirSync(path, { withFileTypes: true }).sort((a, b) =>
      a.name.localeCompare(b.name),
    )) {
      const full = join(path, entry.name);
      hash.update(`${full}\n`);
      if (entry.isDirectory()) walk(full);
      else hash.update(readFileSync(full));
    }
  };
  // A registry that was never written to has no storage directory yet.
  if (existsSync(join(registry.dir, 'data'))) walk(join(registry.dir, 'data'));
  return hash.digest('hex');
}
