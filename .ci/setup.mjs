// Everything the tests need from the system, from .ci/packages.txt: Debian packages on this machine and the
// Debian trixie root that gives the suite podman 5 beside the host's podman 4. Idempotent and fast when all is
// there (it only asks dpkg), so `npm test` runs it every time (pretest). Plain Node: runs before `npm ci`.
//
// Usage: node .ci/setup.mjs
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { alive } from './leftovers.mjs';
import { readPackageList, trixieRootSpec, PACKAGES_FILE } from './test-cache.mjs';

const started = Date.now();
const log = (line) => console.log(`setup: ${line}`);

/** Packages dpkg does not report as installed ("ii"); unknown names count as missing too. */
function missingPackages(names) {
  if (names.length === 0) return [];
  const r = spawnSync('dpkg-query', ['-W', '-f=${db:Status-Abbrev} ${Package}\n', ...names], {
    encoding: 'utf8',
  });
  if (r.error) return names; // no dpkg: not Debian or Ubuntu, everything counts as missing
  const installed = new Set(
    r.stdout
      .split('\n')
      .filter((l) => l.startsWith('ii '))
      .map((l) => l.trim().split(/\s+/).pop().replace(/:.*/, '')),
  );
  return names.filter((n) => !installed.has(n));
}

function run(command, args, options = {}) {
  const r = spawnSync(command, args, { stdio: ['ignore', 'ignore', 'inherit'], ...options });
  if (r.status !== 0) {
    const why = r.error ? r.error.message : `exit ${r.status ?? r.signal}`;
    throw new Error(`${command} ${args.slice(0, 3).join(' ')} failed (${why})`);
  }
}

function installPackages(lists, missing) {
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  log(`installing ${missing.length} Debian packages: ${missing.join(' ')}`);
  run('apt-get', ['update', '-qq'], { env });
  const plain = lists.host.filter((p) => missing.includes(p));
  const lean = lists['host-no-recommends'].filter((p) => missing.includes(p));
  if (plain.length) run('apt-get', ['install', '-y', '-qq', ...plain], { env });
  if (lean.length) run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...lean], { env });
  const still = missingPackages(missing);
  if (still.length) throw new Error(`apt-get did not install: ${still.join(' ')}`);
}

/** Built aside and renamed into place, so a root that exists is complete (and parallel builds cannot mix). */
function buildRoot(spec) {
  log(`building the podman 5 root ${spec.dir} with mmdebstrap (once per package list; 1-3 minutes)`);
  mkdirSync(spec.parent, { recursive: true });
  const partial = `${spec.dir}.partial-${process.pid}`;
  rmSync(partial, { recursive: true, force: true });
  const args = [
    '--quiet',
    `--variant=${spec.variant}`,
    `--include=${spec.packages.join(',')}`,
    ...spec.hooks.map((h) => `--customize-hook=${h}`),
    spec.suite,
    partial,
    spec.mirror,
  ];
  try {
    run('mmdebstrap', args);
    renameSync(partial, spec.dir);
  } catch (error) {
    rmSync(partial, { recursive: true, force: true });
    if (!existsSync(spec.dir)) throw error; // else a parallel setup finished first: use its root
  }
}

/** Roots of older package lists, and partial builds of dead processes, unless a test run has one mounted. */
function removeStaleRoots(spec) {
  if (!existsSync(spec.parent)) return;
  const mountinfo = readFileSync('/proc/self/mountinfo', 'utf8');
  for (const name of readdirSync(spec.parent)) {
    const path = join(spec.parent, name);
    if (path === spec.dir || mountinfo.includes(path)) continue;
    const partialOf = /\.partial-(\d+)$/.exec(name);
    if (partialOf && alive(Number(partialOf[1]))) continue;
    log(`removing the unused root ${path}`);
    rmSync(path, { recursive: true, force: true });
  }
}

function commandAsRoot() {
  const hasSudo = spawnSync('sh', ['-c', 'command -v sudo'], { stdio: 'ignore' }).status === 0;
  return hasSudo
    ? 'sudo env "PATH=$PATH" npm test'
    : `su root -c 'cd ${process.cwd().replace(/'/g, `'\\''`)} && npm test'`;
}

function main() {
  const lists = readPackageList();
  const spec = trixieRootSpec(lists);
  const missing = missingPackages([...lists.host, ...lists['host-no-recommends']]);
  const rootMissing = !existsSync(spec.dir);
  const isRoot = process.getuid?.() === 0;

  if (!isRoot) {
    const todo = [];
    if (missing.length) todo.push(`Debian packages: ${missing.join(' ')}`);
    if (rootMissing)
      todo.push(`the podman 5 root ${spec.dir} (mmdebstrap, from [trixie-root] in ${PACKAGES_FILE})`);
    log('the tests need root: they add a test user, mount a Debian trixie root and run rootful podman.');
    for (const t of todo) log(`missing ${t}`);
    log(`this one command installs ${todo.length ? 'what is missing ' : ''}and runs the tests as root:`);
    console.log(`\n  ${commandAsRoot()}\n`);
    return 1;
  }

  if (missing.length) installPackages(lists, missing);
  if (rootMissing) buildRoot(spec);
  removeStaleRoots(spec);
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  log(
    `ready in ${seconds} s: ${lists.host.length + lists['host-no-recommends'].length} packages, root ${spec.dir}`,
  );
  return 0;
}

try {
  process.exitCode = main();
} catch (error) {
  log(`failed: ${error.message}`);
  process.exitCode = 1;
}
