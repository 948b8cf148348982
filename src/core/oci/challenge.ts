/**
 * Parses a registry's `WWW-Authenticate` value as the challenge list RFC 7235 allows, e.g.
 * `Bearer realm="https://auth/token",service="reg", Basic realm="reg"`: several schemes in one header (or in
 * repeated headers, joined with commas), params with quoted commas and escapes, token68 forms. Registries that
 * offer both Bearer and Basic want clients to take the token flow, as docker and containers/image do.
 */

export interface Challenge {
  scheme: 'basic' | 'bearer' | string;
  params: Record<string, string>;
}

const TCHAR = /[!#$%&'*+.^_`|~0-9A-Za-z-]/;

export function parseChallenges(header: string | readonly string[] | null | undefined): Challenge[] {
  const text = Array.isArray(header) ? header.join(', ') : ((header as string | null | undefined) ?? '');
  const challenges: Challenge[] = [];
  let i = 0;
  const skip = (chars: RegExp) => {
    while (i < text.length && chars.test(text[i]!)) i++;
  };
  const token = () => {
    const start = i;
    while (i < text.length && TCHAR.test(text[i]!)) i++;
    return text.slice(start, i);
  };
  const quoted = () => {
    let value = '';
    for (i++; i < text.length && text[i] !== '"'; i++)
      value += text[i] === '\\' ? (text[++i] ?? '') : text[i];
    i++;
    return value;
  };
  for (;;) {
    skip(/[\s,]/);
    const scheme = token();
    if (!scheme) break;
    const params: Record<string, string> = {};
    for (;;) {
      const before = i;
      skip(/[\s,]/);
      const name = token();
      skip(/[ \t]/);
      if (!name || text[i] !== '=') {
        // The next challenge's scheme (or the end): not a param of this one.
        i = before;
        break;
      }
      const afterName = i;
      skip(/=/);
      skip(/[ \t]/);
      if (i - afterName > 1 || i >= text.length || text[i] === ',') {
        // token68 (`abc==`): an opaque blob registries do not use; keep parsing after it.
        continue;
      }
      params[name.toLowerCase()] = text[i] === '"' ? quoted() : token();
    }
    challenges.push({ scheme: scheme.toLowerCase(), params });
  }
  return challenges;
}

/** The challenge to answer: Bearer (with a realm to ask) over Basic; unknown schemes are ignored. */
export function preferredChallenge(challenges: readonly Challenge[]): Challenge | undefined {
  return (
    challenges.find((c) => c.scheme === 'bearer' && c.params.realm) ??
    challenges.find((c) => c.scheme === 'basic')
  );
}
