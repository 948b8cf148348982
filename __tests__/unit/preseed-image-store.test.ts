/** The stored image's record as it comes back from a cache entry: hostile JSON, or no regular file at all. */
import { afterAll, afterEach, describe, expect, it } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readRecord } from '../../src/actions/preseed-podman-vm/image-store.js';
import { State } from '../../src/actions/preseed-podman-vm/constants.js';
import { loadRunState, saveRunState } from '../../src/actions/preseed-podman-vm/state.js';
import { cliHost } from '../support/cache-files.js';

const tmp = mkdtempSync(join(tmpdir(), 'preseed-is-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let silentWriter: number | undefined;
afterEach(() => {
  if (silentWriter !== undefined) closeSync(silentWriter);
  silentWriter = undefined;
});

const digest = `sha256:${'ab'.repeat(32)}`;
const good = { source: 'docker://q/m:5.3', digest, fileDigest: digest, title: 'disk.qcow2.zst', size: 5 };

function paths(name: string) {
  const image = join(tmp, name);
  return { image, record: `${image}.json` };
}

describe('readRecord', () => {
  it('reads a record it wrote', async () => {
    const p = paths('good');
    writeFileSync(p.record, JSON.stringify(good));
    expect(await readRecord(p)).toEqual(good);
  });

  // The digest becomes the image-digest output, the summary and log lines, and names podman's cache file.
  it.each([
    ['a digest that is no digest', { ...good, digest: 'sha256:x\n::error::forged' }],
    ['a file digest that is no digest', { ...good, fileDigest: 'anything' }],
    ['a size that is not a byte count', { ...good, size: -1 }],
    ['a size past any file', { ...good, size: 1e300 }],
    ['null', null],
    ['a list', [good]],
  ])('treats a record with %s as no record', async (_, value) => {
    const p = paths('hostile');
    writeFileSync(p.record, JSON.stringify(value));
    expect(await readRecord(p)).toBeUndefined();
  });

  it('treats a record that links to a FIFO with a silent writer as no record (not waited on)', async () => {
    const p = paths('fifo');
    const fifo = join(tmp, 'a-fifo');
    execFileSync('mkfifo', [fifo]);
    symlinkSync(fifo, p.record);
    // A writer that never writes: a plain read waits forever. Closed after the test, letting a stuck reader go.
    silentWriter = openSync(fifo, constants.O_RDWR);
    expect(await readRecord(p)).toBeUndefined();
  }, 10_000);
});

// Post deletes the path main saved for its copy into podman's image cache: state is text from another process.
describe('the podman cache temp name in the run state', () => {
  it('is kept only as an absolute path of that temp name shape', () => {
    const { host } = cliHost();
    const temp = `/home/u/.local/share/containers/podman/machine/qemu/cache/.${'ab'.repeat(32)}.qcow2.zst.0a1b2c3d.part`;
    saveRunState(host, { podmanCacheTemp: temp });
    expect(loadRunState(host).podmanCacheTemp).toBe(temp);
    for (const hostile of [
      '/home/u/.ssh/id_rsa',
      'relative/.x.0a1b2c3d.part',
      '/home/u/.x.0a1b2c3d.part/..',
      7,
    ]) {
      host.saveState(State.run, JSON.stringify({ podmanCacheTemp: hostile }));
      expect(loadRunState(host).podmanCacheTemp).toBeUndefined();
    }
  });
});
