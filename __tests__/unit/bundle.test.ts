import { describe, expect, it } from '@jest/globals';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from '../support/harness.js';

interface Lockfile {
  packages: Record<string, { version?: string }>;
}

describe('the bundle', () => {
  // @actions/core loads @actions/http-client, which loads its undici at every action's start; a second major of
  // undici for our registry transport put two HTTP clients in dist/index.js (1.3 MB more to parse, 75 ms more
  // per start: farm-bench, `push-multi-tag --help`, 0.357 s -> 0.282 s median).
  it('carries one undici: the registry transport uses the one the toolkit already loads', () => {
    const lock = JSON.parse(readFileSync(join(REPO_ROOT, 'package-lock.json'), 'utf8')) as Lockfile;
    const copies = Object.entries(lock.packages)
      .filter(([path]) => path.endsWith('node_modules/undici'))
      .map(([path, info]) => `${path}@${info.version}`);
    expect(copies).toHaveLength(1);
  });
});
