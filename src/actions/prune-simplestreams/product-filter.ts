/** Glob patterns over product names (`os:release:variant:arch`): `*` any run of characters, `?` one character. */

function globToRegExp(pattern: string): RegExp {
  const body = pattern
    .split('')
    .map((c) => (c === '*' ? '.*' : c === '?' ? '.' : c.replace(/[.+^${}()|[\]\\]/g, '\\$&')))
    .join('');
  return new RegExp(`^${body}$`, 's');
}

/** A predicate that accepts every product when no pattern is given. */
export function productMatcher(patterns: readonly string[]): (name: string) => boolean {
  if (patterns.length === 0) return () => true;
  const regexps = patterns.map(globToRegExp);
  return (name) => regexps.some((r) => r.test(name));
}
