/*
 * Test preload (node --import): SIGKILLs this process right after its N-th change to the filesystem, N from
 * IMAGE_CI_TEST_CRASH_AFTER. A change is a completed create, write, rename, link, delete or mkdir through node:fs
 * or node:fs/promises. The kill is sent from inside the process, so it lands at exactly that point however loaded
 * the machine is (an outside watcher's kill arrives "some changes later" under load). The product has no hook:
 * the bundle reaches node:fs through the module objects patched here.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';

const target = Number(process.env.IMAGE_CI_TEST_CRASH_AFTER);
if (!Number.isInteger(target) || target < 1)
  throw new Error('IMAGE_CI_TEST_CRASH_AFTER must be a positive integer');
let changes = 0;
const changed = () => {
  if (++changes === target) process.kill(process.pid, 'SIGKILL');
};

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
    changed();
    return result;
  };
}
const syncCalls = promiseCalls.map((name) => `${name}Sync`).concat(['writeSync']);
for (const name of syncCalls) {
  const original = fs[name];
  fs[name] = function (...args) {
    const result = original.apply(this, args);
    changed();
    return result;
  };
}
const openSync = fs.openSync;
fs.openSync = function (path, flags, ...rest) {
  const fd = openSync.call(this, path, flags, ...rest);
  if (writesFlags(flags)) changed();
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
        changed();
        return result;
      };
    }
  }
  if (writesFlags(flags)) changed();
  return handle;
};
syncBuiltinESMExports();
