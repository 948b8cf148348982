/**
 * placeInPodmanCache when the image cannot be hard-linked (podman's cache dir on another filesystem, as HOME and
 * RUNNER_TEMP are on Windows runners): podman takes a file of the right name as its image without checking it,
 * so a copy cut short (a cancelled job) must never stand under that name.
 */
import { afterAll, expect, it } from '@jest/globals';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  watch,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { placeInPodmanCache } from '../../src/actions/preseed-podman-vm/image-store.js';
import { isPodmanCachedDisk } from '../../src/actions/preseed-podman-vm/machine-os.js';

const here = mkdtempSync(join(tmpdir(), 'preseed-pc-'));
// tmpfs: another filesystem than the temp dir, so link() fails with EXDEV and the image is copied.
const other = mkdtempSync('/dev/shm/preseed-pc-');
afterAll(() => {
  rmSync(here, { recursive: true, force: true });
  rmSync(other, { recursive: true, force: true });
});

it('copies across filesystems under another name and renames it into place: the name is never a partial file', async () => {
  expect(statSync(here).dev).not.toBe(statSync(other).dev);
  const image = join(here, 'disk.qcow2.zst');
  const bytes = randomBytes(8 * 1024 * 1024);
  writeFileSync(image, bytes);
  const cacheDir = join(other, 'cache');
  const name = `${'ab'.repeat(32)}.qcow2.zst`;
  await placeInPodmanCache(image, cacheDir, 'warm-up.qcow2.zst'); // makes the dir to watch

  // inotify reports in order: once the marker's event has arrived, every event of the copy has too.
  const events: Array<[string, string | null]> = [];
  const watcher = watch(cacheDir, (type, file) => events.push([type, file]));
  try {
    await placeInPodmanCache(image, cacheDir, name);
    writeFileSync(join(cacheDir, 'marker'), '');
    while (!events.some(([, f]) => f === 'marker')) await new Promise((r) => setTimeout(r, 10));
  } finally {
    watcher.close();
  }
  // Written to under its own name means podman could have read it half-written.
  expect(events.filter(([type, file]) => file === name && type === 'change')).toEqual([]);
  expect(readFileSync(join(cacheDir, name)).equals(bytes)).toBe(true);
  expect(readdirSync(cacheDir).sort()).toEqual(['marker', name, 'warm-up.qcow2.zst'].sort());
  expect(existsSync(image)).toBe(true);
});

it('placing the same image again (a hard link to the same file already there) leaves no second name behind', async () => {
  const image = join(here, 'again.qcow2.zst');
  writeFileSync(image, 'disk');
  const cacheDir = join(here, 'cache');
  await placeInPodmanCache(image, cacheDir, 'x.qcow2.zst');
  await placeInPodmanCache(image, cacheDir, 'x.qcow2.zst');
  expect(readdirSync(cacheDir)).toEqual(['x.qcow2.zst']);
  expect(readFileSync(join(cacheDir, 'x.qcow2.zst'), 'utf8')).toBe('disk');
});

// Before: every older disk stayed. Podman clears its cache only when it pulls, which it never does once the
// containers.conf names our file: on a runner whose HOME persists, one disk per release (a GiB each) piled up.
it("removes podman's older digest-named disks, and nothing else", async () => {
  const cacheDir = join(here, 'prune');
  mkdirSync(cacheDir);
  const older = [`${'1'.repeat(64)}.qcow2.zst`, `${'2'.repeat(64)}.qcow2.xz`];
  const kept = ['notes.txt', `.${'3'.repeat(64)}.qcow2.zst.0a1b2c3d.part`, `${'4'.repeat(63)}.qcow2.zst`];
  for (const name of [...older, ...kept]) writeFileSync(join(cacheDir, name), 'old');
  const image = join(here, 'new.qcow2.zst');
  writeFileSync(image, 'new disk');
  const name = `${'5'.repeat(64)}.qcow2.zst`;
  const placed = await placeInPodmanCache(image, cacheDir, name, isPodmanCachedDisk);
  expect(readdirSync(cacheDir).sort()).toEqual([name, ...kept].sort());
  expect(placed.removed.sort()).toEqual(older.sort());
  expect(readFileSync(join(cacheDir, name), 'utf8')).toBe('new disk');
});

// Before: rm() of a directory with a disk's name threw EISDIR after the disk was placed, and the step failed.
it('leaves a directory named like a disk alone: pruning never fails the step', async () => {
  const cacheDir = join(here, 'prune-dir');
  const dir = join(cacheDir, `${'6'.repeat(64)}.qcow2.zst`);
  mkdirSync(dir, { recursive: true });
  const image = join(here, 'new-dir.qcow2.zst');
  writeFileSync(image, 'new disk');
  const name = `${'7'.repeat(64)}.qcow2.zst`;
  const placed = await placeInPodmanCache(image, cacheDir, name, isPodmanCachedDisk);
  expect(placed.removed).toEqual([]);
  expect(statSync(dir).isDirectory()).toBe(true);
  expect(readFileSync(join(cacheDir, name), 'utf8')).toBe('new disk');
});
