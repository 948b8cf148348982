/**
 * docker credential helpers (`docker-credential-<name> get`): the server URL on stdin, `{ServerURL, Username,
 * Secret}` on stdout. A helper that is not installed, or that says "credentials not found", means no credential
 * (as for docker); any other failure is an error naming the helper. A Username of `<token>` marks the Secret as an
 * identity token (docker-credential-helpers' convention).
 *
 * A helper's stdout is where it puts the secret, so it is never quoted in a message: a Secret in it is masked at
 * once (whatever the exit code), and a failure is told by the helper's stderr alone.
 */
import type { Credential } from '../../core/oci/credential.js';
import { exec, ExecError, type ExecResult } from '../../core/exec.js';
import { externalText } from '../../core/oci/response.js';
import { ActionError } from '../../core/run.js';

/** The helper's own words for "nothing stored for this server" (docker-credential-helpers' ErrCredentialsNotFound). */
const NOT_FOUND = 'credentials not found in native keychain';
/** Helpers may ask a cloud service (ecr-login, gcloud); give them time, not forever. */
const HELPER_TIMEOUT_MS = 120_000;
const HELPER_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

export type HelperAnswer =
  | { kind: 'found'; credential: Credential }
  | { kind: 'not-found' }
  | { kind: 'not-installed'; program: string };

/**
 * The server URLs to ask a helper for, in order: Docker Hub's credentials are stored under docker's index URL
 * by `docker login`, under `docker.io` by containers tools.
 */
function serverUrls(registry: string): string[] {
  return registry === 'docker.io' ? ['https://index.docker.io/v1/', 'docker.io'] : [registry];
}

export async function askHelper(
  helper: string,
  registry: string,
  env: NodeJS.ProcessEnv,
  mask: (secret: string) => void,
): Promise<HelperAnswer> {
  const program = `docker-credential-${helper}`;
  // The name comes from a config file: it must name a program on PATH, not a path.
  if (!HELPER_NAME.test(helper)) {
    throw new ActionError(`credential helper '${externalText(helper, 60)}' is not a valid helper name.`);
  }
  for (const server of serverUrls(registry)) {
    let result: ExecResult;
    try {
      // Looked up on the PATH of `env`, as docker does.
      result = await exec(program, ['get'], {
        timeoutMs: HELPER_TIMEOUT_MS,
        env,
        input: server,
        allowFailure: true,
      });
    } catch (error) {
      if (error instanceof ExecError && error.spawnCode === 'ENOENT')
        return { kind: 'not-installed', program };
      throw error;
    }
    const out = result.stdout.trim();
    const answer = parseAnswer(out);
    const secret = typeof answer?.Secret === 'string' ? answer.Secret : '';
    if (secret) mask(secret);
    if (result.exitCode !== 0) {
      const err = result.stderr.trim();
      if (out === NOT_FOUND || err === NOT_FOUND) continue;
      const said = externalText(secret ? err.replaceAll(secret, '***') : err, 160);
      throw new ActionError(
        `${program} get ${registry} failed (exit ${result.exitCode})${said ? `: ${said}` : out ? ' (its stdout is not shown: it may hold a secret)' : ''}.`,
      );
    }
    if (!answer) throw new ActionError(`${program} get ${registry} did not answer with a JSON object.`);
    const username = typeof answer.Username === 'string' ? answer.Username : '';
    if (!secret) continue;
    const credential: Credential =
      username === '<token>'
        ? { username: '', password: '', identityToken: secret }
        : { username, password: secret };
    return { kind: 'found', credential };
  }
  return { kind: 'not-found' };
}

function parseAnswer(out: string): { Username?: unknown; Secret?: unknown } | undefined {
  try {
    const parsed: unknown = JSON.parse(out);
    return parsed !== null && typeof parsed === 'object'
      ? (parsed as { Username?: unknown; Secret?: unknown })
      : undefined;
  } catch {
    return undefined;
  }
}
