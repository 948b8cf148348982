/*
 * Test preload (node --import): SIGKILLs this process right after its N-th change to the filesystem, N from
 * IMAGE_CI_TEST_CRASH_AFTER (0: count only). A change is a completed create, write, rename, link, delete or mkdir through node:fs
 * or node:fs/promises. The kill is sent from inside the process, so it lands at exactly that point however loaded
 * the machine is (an outside watcher's kill arrives "some changes later" under load). The product has no hook:
 * the bundle reaches node:fs through the module objects patched here.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';

// 0: never kill, only count (the total is written to IMAGE_CI_TEST_CHANGES_FILE when the process exits).
const target = Number(process.env.IMAGE_CI_TEST_CRASH_AFTER);
if (!Number.isInteger(target) || target < 0)
  throw new Error('IMAGE_CI_TEST_CRASH_AFTER must be a whole number');
let changes = 0;
// With IMAGE_CI_TEST_CRASH_PATHS (a regular expression), only changes to matching paths (a rename's or link's
// target) count: a sweep can cover the changes that matter, in the same order on every run, instead of every
// write of a download, whose number depends on how the bytes arrive.
const paths = process.env.IMAGE_CI_TEST_CRASH_PATHS
  ? new RegExp(process.env.IMAGE_CI_TEST_CRASH_PATHS)
  : undefined;
// IMAGE_CI_TEST_CRASH_SIGNAL sends another signal instead (SIGTERM: a cancelled workflow run), which the process
// may handle; it is sent once.
const signal = process.env.IMAGE_CI_TEST_CRASH_SIGNAL || 'SIGKILL';
const changed = (path) => {
  if (paths && !paths.test(String(path))) return;
  if (++changes === target) process.kill(process.pid, signal);
};
/** The path a call changes: the target of a rename, link, symlink or copy, else its first argument. */
const TWO_PATHS = new Set(['rename', 'link', 'symlink', 'copyFile']);
const changedPath = (name, args) => (TWO_PATHS.has(name.replace(/Sync$/, '')) ? args[1] : args[0]);
const handlePaths = new WeakMap();
const fdPaths = new Map();
const countFile = process.env.IMAGE_CI_TEST_CHANGES_FILE;
// Taken before the patching below, so writing the count is not counted.
const writeCount = fs.writeFileSync;
if (countFile) process.on('exit', () => writeCount(countFile, String(changes)));

const writesFlags = (flags) =>
  typeof flags === 'number' ? (flags & 3) !== 0 : /[wa+]/.test(String(flags ?? 'r'));
const promiseCalls = [
  'writeFile',
  'appendFile',
  'rename',
  'link',
  'symlink',
  'unlink',
  'rm',
  'rmdir',
  'mkdir',
  'copyFile',
  'truncate',
];
for (const name of promiseCalls) {
  const original = fsp[name];
  fsp[name] = async function (...args) {
    const result = await original.apply(this, args);
    changed(changedPath(name, args));
    return result;
  };
}
const syncCalls = promiseCalls.map((name) => `${name}Sync`).concat(['writeSync']);
for (const name of syncCalls) {
  const original = fs[name];
  fs[name] = function (...args) {
    const result = original.apply(this, args);
    changed(name === 'writeSync' ? fdPaths.get(args[0]) : changedPath(name, args));
    return result;
  };
}
const openSync = fs.openSync;
fs.openSync = function (path, flags, ...rest) {
  const fd = openSync.call(this, path, flags, ...rest);
  fdPaths.set(fd, path);
  if (writesFlags(flags)) changed(path);
  return fd;
};

let handlePatched = false;
const open = fsp.open;
fsp.open = async function (path, flags, ...rest) {
  const handle = await open.call(this, path, flags, ...rest);
  if (!handlePatched) {
    handlePatched = true;
    const proto = Object.getPrototypeOf(handle);
    for (const name of ['write', 'writeFile', 'appendFile', 'truncate']) {
      const original = proto[name];
      proto[name] = async function (...args) {
        const result = await original.apply(this, args);
        changed(handlePaths.get(this));
        return result;
      };
    }
  }
  handlePaths.set(handle, path);
  if (writesFlags(flags)) changed(path);
  return handle;
};
syncBuiltinESMExports();
