// What the test set-up keeps between runs on one machine, and the one package list everything installs from.
// Shared by .ci/setup.mjs (installs and builds), .ci/test.mjs and the jest global set-up (find and mount).
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** IMAGE_CI_PACKAGES replaces the list (tests of the set-up itself). */
export const PACKAGES_FILE =
  process.env.IMAGE_CI_PACKAGES || join(dirname(fileURLToPath(import.meta.url)), 'packages.txt');

/** Survives between runs (a root build costs minutes); IMAGE_CI_TEST_CACHE moves it. */
export const TEST_CACHE_DIR = process.env.IMAGE_CI_TEST_CACHE || '/var/cache/image-ci-test';

const SECTIONS = ['host', 'host-no-recommends', 'trixie-root'];

/** @returns {Record<'host' | 'host-no-recommends' | 'trixie-root', string[]>} */
export function readPackageList(file = PACKAGES_FILE) {
  const lists = Object.fromEntries(SECTIONS.map((s) => [s, []]));
  let section;
  for (const [i, raw] of readFileSync(file, 'utf8').split('\n').entries()) {
    const line = raw.replace(/#.*/, '').trim();
    if (!line) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      if (!SECTIONS.includes(header[1])) throw new Error(`${file}:${i + 1}: unknown section [${header[1]}]`);
      section = header[1];
    } else if (!section || !/^[a-z0-9][a-z0-9+.-]+$/.test(line)) {
      throw new Error(`${file}:${i + 1}: expected a section header or one Debian package name, got '${raw}'`);
    } else {
      lists[section].push(line);
    }
  }
  return lists;
}

const SUITE = 'trixie';
const MIRROR = 'http://deb.debian.org/debian';
// podman machine init reads the zone from /etc/timezone; no systemd runs in the root to answer timedatectl.
const HOOKS = ['echo Etc/UTC > "$1/etc/timezone"'];

/**
 * The podman 5 root: a Debian trixie tree built by mmdebstrap. Its directory is named after everything that
 * went into it, so a changed package list (or hook) means a new build, never a stale root.
 */
export function trixieRootSpec(lists = readPackageList()) {
  const packages = [...lists['trixie-root']].sort();
  const recipe = { suite: SUITE, mirror: MIRROR, variant: 'apt', packages, hooks: HOOKS };
  const key = createHash('sha256').update(JSON.stringify(recipe)).digest('hex').slice(0, 16);
  const parent = join(TEST_CACHE_DIR, 'trixie-root');
  return { ...recipe, key, parent, dir: join(parent, key) };
}
