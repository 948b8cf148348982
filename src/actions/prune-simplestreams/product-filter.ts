/** Glob patterns over product names (`os:release:variant:arch`): `*` any run of characters, `?` one character. */
import { compareC } from './versions.js';

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

/** A `products` pattern that selects nothing (most likely a typo), with the product names it may have meant. */
export interface UnmatchedPattern {
  pattern: string;
  /** Closest first: a few edits away, else sharing the pattern's leading `os:` (or more). At most five. */
  closest: string[];
}

const MAX_SUGGESTIONS = 5;

/**
 * The fewest edits (insert, delete, substitute, swap two neighbours) to `name` that make the glob match it;
 * `*` and `?` match for free.
 */
export function globDistance(pattern: string, name: string): number {
  const p = [...pattern];
  const n = [...name];
  let before: number[] = [];
  let previous = Array.from({ length: n.length + 1 }, (_, j) => j);
  for (let i = 1; i <= p.length; i++) {
    const pc = p[i - 1]!;
    const row = [previous[0]! + (pc === '*' ? 0 : 1)];
    for (let j = 1; j <= n.length; j++) {
      if (pc === '*') {
        row.push(Math.min(previous[j]!, row[j - 1]!));
        continue;
      }
      const cost = pc === '?' || pc === n[j - 1] ? 0 : 1;
      let best = Math.min(previous[j - 1]! + cost, previous[j]! + 1, row[j - 1]! + 1);
      const pb = p[i - 2];
      if (pb !== undefined && pb !== '*' && pb !== '?' && pc === n[j - 2] && pb === n[j - 1]) {
        best = Math.min(best, before[j - 2]! + 1);
      }
      row.push(best);
    }
    before = previous;
    previous = row;
  }
  return previous[n.length]!;
}

function commonPrefixLength(a: string, b: string): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

function closestNames(pattern: string, names: readonly string[]): string[] {
  // A typo is a few edits in a long enough pattern: one per four literal characters, at most three.
  const limit = Math.min(3, Math.floor(pattern.replace(/[*?]/g, '').length / 4));
  const near = names
    .map((name) => ({ name, distance: globDistance(pattern, name) }))
    .filter((c) => c.distance <= limit)
    .sort((a, b) => a.distance - b.distance || compareC(a.name, b.name));
  if (near.length > 0) return near.slice(0, MAX_SUGGESTIONS).map((c) => c.name);
  // No typo away (`ubuntu:oracular:*` where only noble exists): the names that share its leading `os:` or more.
  const literalStart = pattern.split(/[*?]/)[0]!;
  const shared = names.map((name) => ({ name, length: commonPrefixLength(literalStart, name) }));
  const longest = Math.max(0, ...shared.map((s) => s.length));
  if (!literalStart.slice(0, longest).includes(':')) return [];
  return shared
    .filter((s) => s.length === longest)
    .map((s) => s.name)
    .sort(compareC)
    .slice(0, MAX_SUGGESTIONS);
}

/** The patterns that select no product at all, each with the names it may have meant. */
export function unmatchedPatterns(patterns: readonly string[], names: readonly string[]): UnmatchedPattern[] {
  return patterns
    .filter((pattern) => !names.some((name) => globToRegExp(pattern).test(name)))
    .map((pattern) => ({ pattern, closest: closestNames(pattern, names) }));
}
