/**
 * Parses a registry's `WWW-Authenticate` header: `Bearer realm="...",service="...",scope="..."` or
 * `Basic realm="..."`. Registries send one challenge; params are key=value or key="quoted value".
 */

export interface Challenge {
  scheme: 'basic' | 'bearer' | string;
  params: Record<string, string>;
}

export function parseChallenge(header: string | null): Challenge | undefined {
  const m = header ? /^\s*([A-Za-z][\w-]*)(?:\s+(.*))?$/s.exec(header) : null;
  if (!m) return undefined;
  const params: Record<string, string> = {};
  for (const p of (m[2] ?? '').matchAll(/([\w-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))/g)) {
    params[p[1]!.toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : (p[3] ?? '');
  }
  return { scheme: m[1]!.toLowerCase(), params };
}
