/**
 * Registry credentials kept out of the user's global config: an auth file (containers auth.json format, also
 * valid as a docker config.json) in a private temp dir, masked, and removed by main and again by post.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Host } from './host.js';
import { runnerTemp } from './workspace.js';

export interface Credential {
  username: string;
  password: string;
}

export interface RegistryCredential extends Credential {
  /** A registry host[:port], optionally with a repository path for a narrower match. */
  registry: string;
}

const AUTH_DIR_STATE = 'ici-auth-dir';

function encodeAuth(c: Credential): string {
  return Buffer.from(`${c.username}:${c.password}`, 'utf8').toString('base64');
}

/** Normalises the keys docker and podman write ("https://index.docker.io/v1/", "host/", "host/path"). */
export function normaliseAuthKey(key: string): string {
  let k = key.replace(/^[a-z]+:\/\//i, '').replace(/\/+$/, '');
  if (k === 'index.docker.io/v1' || k === 'index.docker.io' || k === 'registry-1.docker.io') k = 'docker.io';
  return k;
}

/** Parses a containers auth.json / docker config.json; entries without usable credentials are skipped. */
export function parseAuthFile(text: string): Map<string, Credential> {
  const parsed = JSON.parse(text) as {
    auths?: Record<string, { auth?: string; username?: string; password?: string }>;
  };
  const result = new Map<string, Credential>();
  for (const [key, entry] of Object.entries(parsed.auths ?? {})) {
    let cred: Credential | undefined;
    if (entry.auth) {
      const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon > 0) cred = { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
    } else if (entry.username && entry.password) {
      cred = { username: entry.username, password: entry.password };
    }
    if (cred) result.set(normaliseAuthKey(key), cred);
  }
  return result;
}

/**
 * The credential for a repository the way containers/image looks it up: the longest matching
 * `host/path` prefix first, then the bare host.
 */
export function findCredential(
  auths: Map<string, Credential>,
  registryHost: string,
  repository: string,
): Credential | undefined {
  const parts = repository.split('/');
  for (let n = parts.length; n >= 0; n--) {
    const key = n === 0 ? registryHost : `${registryHost}/${parts.slice(0, n).join('/')}`;
    const found = auths.get(key);
    if (found) return found;
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
  const auths: Record<string, { auth: string }> = {};
  for (const c of creds) {
    host.setSecret(c.password);
    host.setSecret(encodeAuth(c));
    auths[normaliseAuthKey(c.registry)] = { auth: encodeAuth(c) };
  }
  const dir = join(runnerTemp(), `ici-auth-${randomBytes(3).toString('hex')}`);
  await mkdir(dir, { mode: 0o700 });
  host.saveState(AUTH_DIR_STATE, dir);
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
  const dir = host.getState(AUTH_DIR_STATE);
  if (!dir) return undefined;
  await rm(dir, { recursive: true, force: true });
  return dir;
}

export async function readAuthFile(path: string): Promise<Map<string, Credential>> {
  return parseAuthFile(await readFile(path, 'utf8'));
}
