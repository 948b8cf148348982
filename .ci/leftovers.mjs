// What a test run left behind: files in its private TMPDIR, processes it started, mounts below its run dir.
// Used by .ci/test.mjs after jest has exited, so nothing of jest's own is still running. Linux /proc only.
import { readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

/** Decodes the octal escapes (`\040`) of mountinfo paths. */
const decode = (field) => field.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));

export function mountsBelow(dir) {
  const points = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter(Boolean)
    .map(decode)
    .filter((p) => p === dir || p.startsWith(`${dir}/`));
  return [...new Set(points)].sort((a, b) => b.length - a.length);
}

function read(path, how = 'utf8') {
  try {
    return how === 'link' ? readlinkSync(path) : readFileSync(path, how);
  } catch {
    return undefined; // gone, a zombie, or a kernel thread
  }
}

/**
 * Processes of this run: they carry its marker variable (everything started below jest inherits it), or work in
 * or are rooted in its run dir (a chroot's `env -i`, a container's init).
 */
export function processesOf(runDir, marker) {
  const found = [];
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    const environ = read(`/proc/${pid}/environ`, 'latin1');
    const cmdline = read(`/proc/${pid}/cmdline`, 'latin1');
    if (environ === undefined || !cmdline) continue;
    const inRun = (p) => p !== undefined && (p === runDir || p.startsWith(`${runDir}/`));
    const marked = environ.split('\0').includes(marker);
    if (marked || inRun(read(`/proc/${pid}/cwd`, 'link')) || inRun(read(`/proc/${pid}/root`, 'link'))) {
      found.push({ pid, command: cmdline.split('\0').join(' ').trim().slice(0, 160) });
    }
  }
  return found;
}

function listTree(dir, prefix = '') {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  return entries.map((e) => `${prefix}${e.name}${e.isDirectory() ? '/' : ''}`);
}

/** Everything left, as readable lines; empty when the run was clean. */
export function findLeftovers({ runDir, testTmp, marker }) {
  const lines = [];
  for (const p of processesOf(runDir, marker)) lines.push(`process ${p.pid} still running: ${p.command}`);
  for (const m of mountsBelow(runDir)) lines.push(`mount still in place: ${m}`);
  for (const f of listTree(testTmp)) lines.push(`left in TMPDIR (${testTmp}): ${f}`);
  return lines;
}

/** Kills, unmounts and deletes whatever a run left, after it has been reported. */
export function removeRun({ runDir, marker }) {
  for (const p of processesOf(runDir, marker)) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  for (const point of mountsBelow(runDir)) {
    spawnSync('umount', ['--recursive', '--lazy', point], { stdio: 'ignore' });
  }
  if (mountsBelow(runDir).length === 0) rmSync(runDir, { recursive: true, force: true });
}

/** A run killed outright (SIGKILL, a crashed machine) left its dir; its owner file names a dead process. */
export function sweepDeadRuns(parent, prefix) {
  for (const name of readdirSync(parent).filter((n) => n.startsWith(prefix))) {
    const runDir = join(parent, name);
    const owner = Number(read(join(runDir, 'owner')));
    if (!owner || alive(owner)) continue;
    console.error(`test: removing ${runDir}, left by an earlier run (process ${owner}) that did not finish`);
    removeRun({ runDir, marker: `${MARKER_ENV}=${name}` });
  }
}

export const MARKER_ENV = 'ICI_TEST_RUN';

/** Whether a process with this pid exists (EPERM: it does, as another user's). */
export function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return error.code === 'EPERM';
  }
}
