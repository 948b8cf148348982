/**
 * Which credential each registry gets, found where podman, skopeo and docker logins put them. Without the
 * `username`/`password` inputs, each registry is looked up in these files in order, first match wins:
 * the `auth-file` input, REGISTRY_AUTH_FILE, `$XDG_RUNTIME_DIR/containers/auth.json` (podman login's default;
 * without XDG_RUNTIME_DIR `/run/containers/<uid>/auth.json`, then for a user not root the runtime dir rootless
 * podman picks itself), `$XDG_CONFIG_HOME/containers/auth.json`,
 * `$DOCKER_CONFIG/config.json` (docker login's; default `~/.docker/config.json`), `~/.dockercfg`, and for root
 * `/etc/containers/auth.json` (first instead of last in a systemd service, as containers/image does). In each file,
 * as containers/image reads it: a `credHelpers` entry for the host decides that file's answer; else the entry with
 * the longest matching `host/path` prefix, then the host; else docker's `credsStore` helper.
 *
 * Files are only read (lazily, each once) and helpers only asked (`get`); nothing is ever written to them.
 */
import { lstatSync, statSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Credential } from '../../core/oci/credential.js';
import { findCredential, maskCredential, parseAuthConfig, type AuthConfig } from './auth-files.js';
import type { Host } from '../../core/host.js';
import { InputError } from '../../core/inputs.js';
import { externalText } from '../../core/oci/response.js';
import { ActionError, errorMessage } from '../../core/run.js';
import { registerSecret } from '../../core/secrets.js';
import { Inputs } from './constants.js';
import { askHelper, type HelperAnswer } from './credential-helpers.js';
import { type Destination, type PushInputs } from './inputs.js';

export interface AuthFileSpec {
  path: string;
  /** The old ~/.dockercfg layout: the `auths` map alone. */
  legacy?: boolean;
  /** Read only when no group or others can read it (the system-wide file). */
  ownerOnly?: boolean;
  /** The `auth-file` input: a problem with it is the user's input mistake. */
  fromInput?: boolean;
}

export interface FoundCredential {
  credential: Credential;
  /** Where it came from, for the log: a file and entry, or a helper. Never the secret. */
  source: string;
}

const SYSTEM_AUTH_FILE = '/etc/containers/auth.json';

/**
 * Where rootless podman writes its logins when XDG_RUNTIME_DIR is unset (a runner service outside a login
 * session): podman then picks a runtime dir of its own and sets XDG_RUNTIME_DIR to it for its own process only, so
 * `podman login` writes below it while containers/image, reading the variable, would look in /run/containers/<uid>.
 * Its choice: /run/user/<uid>; else podman 5 takes containers/storage's $TMPDIR/storage-run-<uid> and podman 4
 * $TMPDIR/podman-run-<uid>; else $HOME/rundir (podman 4; podman 5 fails instead). A dir counts only when the user
 * owns it, may use it fully and no one else may write it (mode & 0722 == 0700, so nobody else can have planted one
 * in /tmp); podman 4.3 took a 0755 one here and refused a 0770 one. Podman 5 (containers/storage homedir.RuntimeDir)
 * takes neither dir through a symlink, where podman 4 follows one to /run/user/<uid>: a symlinked /run/user/<uid>
 * (seen with podman 5.4.2: its login went to storage-run-<uid>) is searched first, then the temp dirs.
 */
function podmanRuntimeDir(env: NodeJS.ProcessEnv, uid: number, home: string): string[] {
  if (uid === 0) return [];
  const usable = (dir: string, follow: boolean) => {
    const info = (follow ? statSync : lstatSync)(dir, { throwIfNoEntry: false });
    return info?.isDirectory() === true && info.uid === uid && (info.mode & 0o722) === 0o700;
  };
  const auth = (dir: string) => join(dir, 'containers', 'auth.json');
  const runUser = `/run/user/${uid}`;
  if (usable(runUser, false)) return [auth(runUser)];
  const podman4RunUser = usable(runUser, true) ? [auth(runUser)] : [];
  const tmp = env.TMPDIR || '/tmp';
  // Both, in case podman 4 and 5 have both been used here: each looks in its own.
  const found = [
    [join(tmp, `storage-run-${uid}`), false] as const,
    [join(tmp, `podman-run-${uid}`), true] as const,
  ].filter(([dir, follow]) => usable(dir, follow));
  const temp = found.length > 0 ? found.map(([dir]) => auth(dir)) : [auth(join(home, 'rundir'))];
  return [...podman4RunUser, ...temp];
}

/** The files to search, in order, for this environment (the module comment lists the rule). */
export function authFileSearchPath(
  authFileInput: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
  uid: number | undefined = process.getuid?.(),
): AuthFileSpec[] {
  const home = env.HOME || homedir();
  const explicit: AuthFileSpec[] = [];
  if (authFileInput) explicit.push({ path: authFileInput, fromInput: true });
  if (env.REGISTRY_AUTH_FILE) explicit.push({ path: env.REGISTRY_AUTH_FILE });
  const runtime = env.XDG_RUNTIME_DIR
    ? [join(env.XDG_RUNTIME_DIR, 'containers', 'auth.json')]
    : uid !== undefined
      ? [`/run/containers/${uid}/auth.json`, ...podmanRuntimeDir(env, uid, home)]
      : [];
  const defaults: AuthFileSpec[] = [
    ...runtime.map((path) => ({ path })),
    { path: join(env.XDG_CONFIG_HOME || join(home, '.config'), 'containers', 'auth.json') },
    { path: join(env.DOCKER_CONFIG || join(home, '.docker'), 'config.json') },
    { path: join(home, '.dockercfg'), legacy: true },
  ];
  if (uid !== 0) return [...explicit, ...defaults];
  const system: AuthFileSpec = { path: SYSTEM_AUTH_FILE, ownerOnly: true };
  return env.INVOCATION_ID ? [system, ...explicit, ...defaults] : [...explicit, ...defaults, system];
}

export class CredentialLookup {
  private readonly configs = new Map<string, Promise<AuthConfig | undefined>>();
  private readonly helperAnswers = new Map<string, Promise<HelperAnswer>>();

  constructor(
    readonly files: readonly AuthFileSpec[],
    private readonly log: (line: string) => void,
    private readonly env: NodeJS.ProcessEnv = process.env,
    /** Masks a secret a helper printed, as soon as it is seen (before any message could quote it). */
    private readonly mask: (secret: string) => void = registerSecret,
  ) {}

  /** The credential for `registry/repository`, or undefined (anonymous). */
  async find(registry: string, repository: string): Promise<FoundCredential | undefined> {
    for (const file of this.files) {
      const config = await this.read(file);
      if (!config) continue;
      const helper = config.credHelpers.get(registry);
      if (helper) {
        // As in containers/image: the helper named for this host is this file's whole answer.
        const found = await this.fromHelper(helper, registry, `credHelpers in ${file.path}`);
        if (found) return found;
        continue;
      }
      const entry = findCredential(config.auths, registry, repository);
      if (entry) return { credential: entry.credential, source: `${file.path} (entry ${entry.key})` };
      if (config.credsStore) {
        const found = await this.fromHelper(config.credsStore, registry, `credsStore in ${file.path}`);
        if (found) return found;
      }
    }
    return undefined;
  }

  private async fromHelper(
    helper: string,
    registry: string,
    named: string,
  ): Promise<FoundCredential | undefined> {
    const key = `${helper}\n${registry}`;
    let answer = this.helperAnswers.get(key);
    if (!answer) {
      answer = askHelper(helper, registry, this.env, this.mask).then((a) => {
        if (a.kind === 'not-installed')
          this.log(`${registry}: ${a.program} (${named}) is not on PATH; looking further.`);
        return a;
      });
      this.helperAnswers.set(key, answer);
    }
    const settled = await answer;
    if (settled.kind !== 'found') return undefined;
    return { credential: settled.credential, source: `docker-credential-${helper} (${named})` };
  }

  private read(file: AuthFileSpec): Promise<AuthConfig | undefined> {
    let config = this.configs.get(file.path);
    if (!config) {
      config = readAuthConfig(file, this.log);
      this.configs.set(file.path, config);
    }
    return config;
  }
}

async function readAuthConfig(
  file: AuthFileSpec,
  log: (line: string) => void,
): Promise<AuthConfig | undefined> {
  try {
    if (file.ownerOnly && ((await stat(file.path)).mode & 0o044) !== 0) {
      log(`Skipping ${file.path}: others can read it (containers/image refuses such a file too).`);
      return undefined;
    }
    return parseAuthConfig(await readFile(file.path, 'utf8'), file.legacy);
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (!file.fromInput && (code === 'ENOENT' || code === 'ENOTDIR')) return undefined;
    const reason = externalText(errorMessage(error), 160);
    if (file.fromInput) throw new InputError(Inputs.authFile, `cannot read ${file.path}: ${reason}`);
    throw new ActionError(`cannot read the auth file ${file.path}: ${reason}. Fix or remove it.`);
  }
}

export interface ResolvedCredentials {
  /** Per destination registry; undefined means anonymous. */
  destinations: Map<string, Credential | undefined>;
  /** For a `docker://` source (undefined also when there is none). */
  source?: Credential;
}

function sameCredential(a: Credential | undefined, b: Credential | undefined): boolean {
  return a?.username === b?.username && a?.password === b?.password && a?.identityToken === b?.identityToken;
}

function describe(
  registry: string,
  found: FoundCredential | undefined,
  searched: readonly AuthFileSpec[],
): string {
  if (!found) {
    return `${registry}: no credentials found (searched ${searched.map((f) => f.path).join(', ')}); anonymous access.`;
  }
  const who = found.credential.identityToken ? 'an identity token' : `user '${found.credential.username}'`;
  return `${registry}: credentials (${who}) from ${found.source}.`;
}

/**
 * Credentials for every destination registry and a `docker://` source, logging per registry where each came
 * from. `username`/`password` win for the destinations (and for a source on one of their registries).
 */
export async function resolveCredentials(
  host: Host,
  inputs: PushInputs,
  sourceRepository: { registry: string; repository: string } | undefined,
  lookup: CredentialLookup = new CredentialLookup(
    authFileSearchPath(inputs.authFile),
    (line) => host.info(line),
    process.env,
    (secret) => host.setSecret(secret),
  ),
): Promise<ResolvedCredentials> {
  const given: Credential | undefined =
    inputs.username && inputs.password ? { username: inputs.username, password: inputs.password } : undefined;
  const destinations = new Map<string, Credential | undefined>();
  const byRegistry = new Map<string, Destination[]>();
  for (const d of inputs.repositories) byRegistry.set(d.registry, [...(byRegistry.get(d.registry) ?? []), d]);
  for (const [registry, repositories] of byRegistry) {
    if (given) {
      destinations.set(registry, given);
      host.info(`${registry}: credentials (user '${given.username}') from the username and password inputs.`);
      continue;
    }
    let first: { repository: string; found: FoundCredential | undefined } | undefined;
    for (const { repository } of repositories) {
      const found = await lookup.find(registry, repository);
      maskCredential(host, found?.credential);
      if (!first) {
        first = { repository, found };
        host.info(describe(registry, found, lookup.files));
      } else if (!sameCredential(first.found?.credential, found?.credential)) {
        throw new InputError(
          Inputs.repositories,
          `${registry}/${first.repository} and ${registry}/${repository} have different logins ` +
            `(${first.found?.source ?? 'none'}; ${found?.source ?? 'none'}), and one push uses one login per registry: ` +
            'push them in separate steps.',
        );
      }
    }
    destinations.set(registry, first?.found?.credential);
  }
  if (!sourceRepository) return { destinations };
  const { registry, repository } = sourceRepository;
  if (given && byRegistry.has(registry)) return { destinations, source: given };
  const found = await lookup.find(registry, repository);
  maskCredential(host, found?.credential);
  host.info(describe(`${registry} (source)`, found, lookup.files));
  return found ? { destinations, source: found.credential } : { destinations };
}
