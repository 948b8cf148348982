/**
 * Registry credentials in the files podman, skopeo and docker share (containers-auth.json(5), docker's
 * config.json), read the way containers/image reads them; and credentials kept out of the user's config: an
 * auth file in a private temp dir, masked, and removed by main and again by post.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Host } from '../../core/host.js';
import { encodeAuth, type Credential } from '../../core/oci/credential.js';
import { runnerTemp } from '../../core/workspace.js';
import { loadRunState, saveRunState } from './state.js';

export interface RegistryCredential extends Credential {
  /** A registry host[:port], optionally with a repository path for a narrower match. */
  registry: string;
}

/** One auth file: credentials by normalised key, and the credential helpers it names. */
export interface AuthConfig {
  auths: Map<string, Credential>;
  /** Registry host -> helper name (`docker-credential-<name>`). */
  credHelpers: Map<string, string>;
  /** docker's default helper for every registry without an entry of its own. */
  credsStore?: string;
}

const DOCKER_HUB_ALIASES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);

/**
 * Masks everything of a credential that could be printed: the password, its Basic form (an echoed request
 * header, a debug log) and an identity token.
 */
export function maskCredential(host: Pick<Host, 'setSecret'>, c: Credential | undefined): void {
  if (c?.password) {
    host.setSecret(c.password);
    host.setSecret(encodeAuth(c));
  }
  if (c?.identityToken) host.setSecret(c.identityToken);
}

/**
 * The key docker and podman wrote, as `host[:port][/path]`: a URL form ("https://index.docker.io/v1/") means
 * its host only, as in containers/image; Docker Hub's names are all `docker.io`.
 */
export function normaliseAuthKey(key: string): string {
  const stripped = key.replace(/^https?:\/\//i, '');
  const k = stripped !== key ? stripped.split('/')[0]! : stripped.replace(/\/+$/, '');
  const slash = k.indexOf('/');
  const host = (slash < 0 ? k : k.slice(0, slash)).toLowerCase();
  const rest = slash < 0 ? '' : k.slice(slash);
  return `${DOCKER_HUB_ALIASES.has(host) ? 'docker.io' : host}${rest}`;
}

interface AuthEntry {
  auth?: unknown;
  username?: unknown;
  password?: unknown;
  identitytoken?: unknown;
}

function decodeEntry(entry: AuthEntry): Credential | undefined {
  let username = '';
  let password = '';
  if (typeof entry.auth === 'string' && entry.auth) {
    const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon >= 0) {
      username = decoded.slice(0, colon);
      // containers/image trims the NULs some writers leave at the end.
      password = decoded.slice(colon + 1).replace(/\0+$/, '');
    }
  } else if (typeof entry.username === 'string' && typeof entry.password === 'string') {
    username = entry.username;
    password = entry.password;
  }
  const identityToken = typeof entry.identitytoken === 'string' ? entry.identitytoken : '';
  if (identityToken) return { username, password, identityToken };
  // `{}` entries are docker's markers for a credential kept by a helper, not credentials.
  return username && password ? { username, password } : undefined;
}

/**
 * Parses a containers auth.json / docker config.json (or, `legacy`, the old ~/.dockercfg: the `auths` map alone).
 * Throws on text that is not such a JSON object. Keys already in normal form win over URL forms of the same host.
 */
export function parseAuthConfig(text: string, legacy = false): AuthConfig {
  const parsed = JSON.parse(text) as unknown;
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new Error('not a JSON object');
  }
  const doc = parsed as { auths?: unknown; credHelpers?: unknown; credsStore?: unknown };
  const entries = (legacy ? doc : doc.auths) as Record<string, AuthEntry> | undefined;
  const auths = new Map<string, Credential>();
  const ordered = Object.entries(typeof entries === 'object' && entries ? entries : {}).sort(
    ([a], [b]) => Number(normaliseAuthKey(a) !== a) - Number(normaliseAuthKey(b) !== b),
  );
  for (const [key, entry] of ordered) {
    const credential = typeof entry === 'object' && entry ? decodeEntry(entry) : undefined;
    const normal = normaliseAuthKey(key);
    if (credential && !auths.has(normal)) auths.set(normal, credential);
  }
  const credHelpers = new Map<string, string>();
  if (!legacy && typeof doc.credHelpers === 'object' && doc.credHelpers) {
    for (const [key, helper] of Object.entries(doc.credHelpers as Record<string, unknown>)) {
      if (typeof helper === 'string' && helper) credHelpers.set(normaliseAuthKey(key), helper);
    }
  }
  const credsStore =
    !legacy && typeof doc.credsStore === 'string' && doc.credsStore ? doc.credsStore : undefined;
  return credsStore ? { auths, credHelpers, credsStore } : { auths, credHelpers };
}

/**
 * The entry for a repository the way containers/image looks it up: the longest matching `host/path` prefix
 * first, then the bare host. Returns the key that matched, for the log.
 */
export function findCredential(
  auths: ReadonlyMap<string, Credential>,
  registryHost: string,
  repository: string,
): { key: string; credential: Credential } | undefined {
  const parts = repository.split('/');
  for (let n = parts.length; n >= 0; n--) {
    const key = n === 0 ? registryHost : `${registryHost}/${parts.slice(0, n).join('/')}`;
    const credential = auths.get(key);
    if (credential) return { key, credential };
  }
  return undefined;
}

export interface IsolatedAuth {
  dir: string;
  /** containers auth.json (REGISTRY_AUTH_FILE) */
  authFile: string;
  /** A directory holding config.json, for tools that read DOCKER_CONFIG. */
  dockerConfigDir: string;
  /** Env for child processes so they use only this file. */
  env: Record<string, string>;
  remove(): Promise<void>;
}

/** Masks every secret, then writes the private auth dir; its path is saved so post can remove it. */
export async function createIsolatedAuth(
  host: Host,
  creds: readonly RegistryCredential[],
): Promise<IsolatedAuth> {
  const auths: Record<string, { auth: string; identitytoken?: string }> = {};
  for (const c of creds) {
    maskCredential(host, c);
    auths[normaliseAuthKey(c.registry)] = {
      auth: encodeAuth(c),
      ...(c.identityToken ? { identitytoken: c.identityToken } : {}),
    };
  }
  const dir = join(runnerTemp(), `ici-auth-${randomBytes(3).toString('hex')}`);
  // Named in the state before it exists: a main killed right after the mkdir still leaves post its path.
  saveRunState(host, { authDir: dir });
  await mkdir(dir, { mode: 0o700 });
  const body = `${JSON.stringify({ auths }, null, 2)}\n`;
  const authFile = join(dir, 'auth.json');
  const dockerConfigDir = join(dir, 'docker');
  await writeFile(authFile, body, { mode: 0o600, flag: 'wx' });
  await mkdir(dockerConfigDir, { mode: 0o700 });
  await writeFile(join(dockerConfigDir, 'config.json'), body, { mode: 0o600, flag: 'wx' });
  return {
    dir,
    authFile,
    dockerConfigDir,
    env: { REGISTRY_AUTH_FILE: authFile, DOCKER_CONFIG: dockerConfigDir },
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}

/** Post-step cleanup from state; safe to call when main never got that far or already removed it. */
export async function removeIsolatedAuth(host: Host): Promise<string | undefined> {
  const dir = loadRunState(host).authDir;
  if (!dir) return undefined;
  await rm(dir, { recursive: true, force: true });
  saveRunState(host, {});
  return dir;
}
