/**
 * Registry authentication state: which scheme the registry asked for, and bearer tokens per scope. A token is
 * fetched once per (realm, scope) at a time — every request that needs it waits on the same fetch, which runs
 * under one retry budget and the transport's timeouts — and is reused until shortly before it expires.
 */
import { encodeAuth, type Credential } from './credential.js';
import { preferredChallenge, type Challenge } from './challenge.js';
import { RegistryError } from './errors.js';
import { ERROR_BODY_LIMIT, externalText, type RegistryResponse } from './response.js';
import { TransientError, type RetryBudget } from './retry.js';
import type { RequestSpec } from './transport.js';

interface AuthOptions {
  registry: string;
  credentials?: Credential;
  onToken?: (token: string) => void;
  /** Sends a request and reads its answer whole (a cut or stalled body is retried as a failed try). */
  sendAndRead: (
    spec: RequestSpec,
    limit: number,
    budget: RetryBudget,
  ) => Promise<{ response: RegistryResponse; bytes: Buffer }>;
  budget: () => RetryBudget;
}

interface Token {
  token: string;
  expiresAt: number;
}

interface Flight {
  promise: Promise<Token>;
  token?: string;
}

/** Renew a cached token this long before it expires, so a request never races its expiry. */
const TOKEN_EXPIRY_MARGIN_MS = 20_000;
const DEFAULT_TOKEN_LIFETIME_S = 60;

export function pullScope(repository: string): string {
  return `repository:${repository}:pull`;
}

export function pushScope(repository: string): string {
  return `repository:${repository}:pull,push`;
}

export class RegistryAuth {
  private scheme: 'basic' | 'bearer' | undefined;
  private bearer: { realm: string; service?: string } | undefined;
  private readonly tokens = new Map<string, Flight>();

  constructor(private readonly options: AuthOptions) {}

  /** The Authorization header for a request needing `scopes`, once the registry has said how it wants it. */
  async authorization(scopes: readonly string[]): Promise<string | undefined> {
    const credentials = this.options.credentials;
    if (this.scheme === 'basic' && credentials) return basic(credentials);
    if (this.scheme === 'bearer' && scopes.length > 0) return `Bearer ${await this.token(scopes)}`;
    return undefined;
  }

  /**
   * Takes note of a 401's challenges; true when another try with (new) credentials may succeed. `sent` is
   * the Authorization that was refused: a refused token is forgotten, so the next try fetches a fresh one.
   */
  challenged(challenges: readonly Challenge[], scopes: readonly string[], sent: string | undefined): boolean {
    const challenge = preferredChallenge(challenges);
    if (challenge?.scheme === 'bearer') {
      this.bearer = { realm: challenge.params.realm!, service: challenge.params.service };
      this.scheme = 'bearer';
      if (sent) this.forget(scopes, sent);
      return true;
    }
    if (challenge?.scheme === 'basic') {
      const credentials = this.options.credentials;
      if (!credentials) {
        throw new RegistryError(
          `${this.options.registry} requires a login and no credentials were found for it: log in before this step (podman login, docker login, a login action), or give username and password.`,
          401,
          'UNAUTHORIZED',
        );
      }
      if (credentials.identityToken && !credentials.password) {
        throw new RegistryError(
          `${this.options.registry} asks for a password (Basic auth), but its login holds only an identity token, which works with token servers: log in with a password instead.`,
          401,
          'UNAUTHORIZED',
        );
      }
      const retry = this.scheme !== 'basic' || !sent;
      this.scheme = 'basic';
      return retry;
    }
    return false;
  }

  /** The error for a request the registry refused even with fresh credentials. */
  refusal(
    challenges: readonly Challenge[],
    scopes: readonly string[],
    sent: string | undefined,
    what: string,
    status = 401,
  ): RegistryError {
    const user = who(this.options.credentials);
    const challenge = preferredChallenge(challenges);
    const lacking = missingActions(scopes, sent);
    if (challenge?.params.error === 'insufficient_scope' || lacking.length > 0) {
      const detail =
        lacking.length > 0
          ? lacking
              .map((l) => `the '${l.actions.join("', '")}' right on repository '${l.repository}'`)
              .join(' and ')
          : `a right it needs on ${challenge?.params.scope ?? scopes.join(' ')}`;
      return new RegistryError(
        externalText(`${what}: ${user} lacks ${detail} (the registry answered insufficient_scope).`, 400),
        status,
        'DENIED',
      );
    }
    return new RegistryError(
      `${what}: the registry refused access (HTTP ${status})${this.options.credentials ? ` for ${user}` : '; no credentials were given'}.`,
      status,
      'UNAUTHORIZED',
    );
  }

  private forget(scopes: readonly string[], sent: string): void {
    const key = scopeKey(scopes);
    // Several requests refused with the same token must cause one new fetch, not one each.
    if (`Bearer ${this.tokens.get(key)?.token}` === sent) this.tokens.delete(key);
  }

  private async token(scopes: readonly string[]): Promise<string> {
    const key = scopeKey(scopes);
    const current = this.tokens.get(key);
    if (current) {
      // A failed fetch fails everyone who waited on it: its budget is spent, nobody starts another round.
      const token = await current.promise;
      if (token.expiresAt > Date.now()) return token.token;
      if (this.tokens.get(key) !== current) return this.token(scopes);
    }
    const flight: Flight = { promise: this.fetchToken(scopes) };
    this.tokens.set(key, flight);
    flight.promise.then(
      (t) => (flight.token = t.token),
      () => {
        if (this.tokens.get(key) === flight) this.tokens.delete(key);
      },
    );
    return (await flight.promise).token;
  }

  private async fetchToken(scopes: readonly string[]): Promise<Token> {
    const bearer = this.bearer!;
    let url: URL | undefined;
    try {
      url = new URL(bearer.realm);
    } catch {
      // reported below
    }
    // Any other scheme (file:, ftp:) is no token server; no retry can make it one.
    if (url?.protocol !== 'https:' && url?.protocol !== 'http:') {
      throw new RegistryError(
        `${this.options.registry} names a token server that is not an http(s) URL: '${externalText(bearer.realm, 100)}'.`,
      );
    }
    const credentials = this.options.credentials;
    const server = `${url.origin}${url.pathname}`;
    const what = `get a token from ${server}`;
    const request = credentials?.identityToken
      ? oauth2Request(url, bearer.service, scopes, credentials.identityToken)
      : basicRequest(url, bearer.service, scopes, credentials);
    let response: RegistryResponse;
    let bytes: Buffer;
    try {
      ({ response, bytes } = await this.options.sendAndRead(
        { ...request, ok: [200, 400, 401, 403], what },
        ERROR_BODY_LIMIT,
        this.options.budget(),
      ));
    } catch (error) {
      if (error instanceof TransientError) error.exhausted = true;
      throw error;
    }
    const user =
      credentials && !credentials.identityToken ? `the credentials of ${who(credentials)}` : who(credentials);
    if (response.status !== 200) {
      const detail = externalText(bytes.toString('utf8'), 120);
      throw new RegistryError(
        `${what}: the token server refused ${user} for ${scopes.join(' ')} (HTTP ${response.status})${detail ? `: ${detail}` : ''}.`,
        response.status,
        'UNAUTHORIZED',
      );
    }
    const text = bytes.toString('utf8');
    let body: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      body = JSON.parse(text) as typeof body;
    } catch {
      throw new RegistryError(
        `${what}: the token server answered ${response.header('content-type') ?? 'without a content type'}, not JSON: "${externalText(text, 80)}".`,
      );
    }
    const token = typeof body.token === 'string' ? body.token : body.access_token;
    if (typeof token !== 'string' || token === '') {
      throw new RegistryError(`${what}: the token server's answer holds no token.`);
    }
    this.options.onToken?.(token);
    const lifetimeS =
      typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : DEFAULT_TOKEN_LIFETIME_S;
    const lifetimeMs = lifetimeS * 1000;
    return { token, expiresAt: Date.now() + Math.max(lifetimeMs - TOKEN_EXPIRY_MARGIN_MS, lifetimeMs / 2) };
  }
}

/** The docker token flow: a GET with the scopes in the query, Basic credentials when there are any. */
function basicRequest(
  realm: URL,
  service: string | undefined,
  scopes: readonly string[],
  credentials: Credential | undefined,
): Pick<RequestSpec, 'method' | 'url' | 'headers'> {
  const url = new URL(realm);
  if (service) url.searchParams.set('service', service);
  for (const scope of scopes) url.searchParams.append('scope', scope);
  return { method: 'GET', url, headers: credentials ? { authorization: basic(credentials) } : {} };
}

/**
 * An identity token (what `docker login` keeps for registries that hand one out) is an OAuth2 refresh token: it is
 * exchanged with a POST of a refresh_token grant, as docker and containers/image do.
 */
function oauth2Request(
  realm: URL,
  service: string | undefined,
  scopes: readonly string[],
  identityToken: string,
): Pick<RequestSpec, 'method' | 'url' | 'headers' | 'body'> {
  const form = new URLSearchParams({
    grant_type: 'refresh_token',
    refresh_token: identityToken,
    client_id: 'image-ci-actions',
  });
  if (service) form.set('service', service);
  for (const scope of scopes) form.append('scope', scope);
  return {
    method: 'POST',
    url: realm,
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: Buffer.from(form.toString()),
  };
}

/** Who is asking, for messages: never a secret. */
function who(credentials: Credential | undefined): string {
  if (!credentials) return 'anonymous access';
  const user = `user '${credentials.username}'`;
  if (!credentials.identityToken) return user;
  return credentials.username ? `the identity token of ${user}` : 'the identity token';
}

function basic(credentials: Credential): string {
  return `Basic ${encodeAuth(credentials)}`;
}

function scopeKey(scopes: readonly string[]): string {
  return [...scopes].sort().join(' ');
}

/**
 * Which requested actions a refused bearer token does not grant, read from its `access` claim when it is a JWT
 * (docker-registry's token format). Only for the message: the registry's decision stands either way.
 */
function missingActions(
  scopes: readonly string[],
  sent: string | undefined,
): { repository: string; actions: string[] }[] {
  if (!sent?.startsWith('Bearer ')) return [];
  let access: { type?: string; name?: string; actions?: string[] }[];
  try {
    const payload = sent.slice(7).split('.')[1] ?? '';
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as { access?: unknown };
    if (!Array.isArray(claims.access)) return [];
    access = claims.access as typeof access;
  } catch {
    return [];
  }
  return scopes.flatMap((scope) => {
    const m = /^repository:(.+):([^:]+)$/.exec(scope);
    if (!m) return [];
    const granted = access.find((a) => a.type === 'repository' && a.name === m[1])?.actions ?? [];
    const lacking = m[2]!.split(',').filter((a) => !granted.includes(a));
    return lacking.length > 0 ? [{ repository: m[1]!, actions: lacking }] : [];
  });
}
