/**
 * The secrets this process knows, in one place: both hosts register what they mask here, and exec.ts keeps
 * every variable holding one of them out of child environments. Process-wide on purpose, so a child started
 * anywhere (whatever host, whatever call site) is covered.
 */

/** The CLI's documented password variable (docker login has --password-stdin; CI systems pass env). */
export const CLI_PASSWORD_ENV = 'IMAGE_CI_PASSWORD';

/**
 * Variables that hold credentials even when nobody registered them: ours, and the runner's own tokens (cache
 * and OIDC access), which no tool we start needs.
 */
export const SECRET_ENV_VARS: readonly string[] = [
  CLI_PASSWORD_ENV,
  'ACTIONS_RUNTIME_TOKEN',
  'ACTIONS_ID_TOKEN_REQUEST_TOKEN',
  'GITHUB_TOKEN',
  'GH_TOKEN',
];

/**
 * Lines shorter than this are not masked on their own: a `{` or `}` line of a JSON key would otherwise mask
 * every brace in the log, and carries nothing secret.
 */
const MIN_LINE_MASK = 6;

const registered = new Set<string>();

export function registerSecret(value: string): void {
  if (value) registered.add(value);
}

export function registeredSecrets(): ReadonlySet<string> {
  return registered;
}

/**
 * What to mask for one secret: the value, and for a multi-line value each of its lines too, because logs
 * (the runner's masker, our own redaction) see output one line at a time. The runner does the same for the
 * `secrets` context; `::add-mask::` of a multi-line value alone would never match a single printed line.
 */
export function maskValues(value: string): string[] {
  if (!value) return [];
  const lines = value
    .split(/\r\n|\r|\n/)
    .map((l) => l.trim())
    .filter((l) => l.length >= MIN_LINE_MASK && l !== value);
  return [value, ...new Set(lines)];
}

/** `text` with every mask replaced by `***`, longest first (a whole multi-line secret before its lines). */
export function redact(text: string, masks: Iterable<string>): string {
  let result = text;
  for (const mask of [...masks].sort((a, b) => b.length - a.length)) result = result.split(mask).join('***');
  return result;
}

/**
 * `text` without any registered secret. For server text that is cut short before it reaches a log: a cut through
 * a secret leaves a prefix no mask matches any more (an error body echoing the Authorization header).
 */
export function withoutSecrets(text: string): string {
  return redact(text, [...registered].flatMap(maskValues));
}
