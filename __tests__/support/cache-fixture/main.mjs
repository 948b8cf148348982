// Fixture main: what an action does with the cache layer. Imports the tsc output (lib/), so it runs the same
// code the bundle would, in a child process started by the runner harness.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { planCacheSave, restoreCache } from '../../../lib/core/cache.js';
import { buildCacheKey, cacheKeyPrefix } from '../../../lib/core/cache-key.js';
import { ActionsHost } from '../../../lib/core/host.js';
import { readBoolean, readRequiredString } from '../../../lib/core/inputs.js';
import { stableDir } from '../../../lib/core/workspace.js';

const host = new ActionsHost();
const content = readRequiredString(host.inputs, 'content');
const parts = { prefix: readRequiredString(host.inputs, 'key-prefix'), inputs: { content } };
const key = buildCacheKey(parts);
host.setOutput('key', key);
const dir = await stableDir('fixture-data');
const file = join(dir, 'content.txt');

let hit = false;
if (readBoolean(host.inputs, 'restore', true)) {
  const result = await restoreCache(host, [dir], key, [cacheKeyPrefix(parts)]);
  host.setOutput('cache-hit', result.hit ? 'true' : 'false');
  host.setOutput('cache-matched-key', result.matchedKey ?? '');
  hit = result.hit;
}
host.setOutput('restored-content', existsSync(file) ? readFileSync(file, 'utf8') : '');
if (!hit) {
  writeFileSync(file, content);
  planCacheSave(host, { paths: [dir], key });
}
