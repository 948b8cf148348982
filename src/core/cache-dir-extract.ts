/**
 * Extracts a directory-backend archive with every member shown to confineMembers before tar gets it, as the
 * Actions cache's stream does. The archive is the volume's content, written by whoever shares the volume, and
 * tar -P writes wherever a member name (or a link it made) points: unchecked, an entry could plant a file anywhere
 * the job can write. The stored archive is opened once, without following a link or blocking (a FIFO), and the
 * same descriptor is what zstd reads.
 */
import { spawn } from 'node:child_process';
import { constants, existsSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { resolve } from 'node:path';
import { finished, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { confineMembers, EntryRefused } from './cache-confinement.js';
import { leftovers, undoExtraction } from './cache-undo.js';
import { exitOf, launchPair, ownFailure } from './child-exit.js';
import { childEnv } from './exec.js';
import { errorMessage } from './run.js';
import { formatDuration } from './summary.js';
import { TarMemberWatcher } from './tar-members.js';

/**
 * Extracts `archive` (a zstd tar of absolute names, as saveToDirCache writes it) for `paths`. Throws EntryRefused
 * (or a TarFormatError) before tar sees a member outside them; members before it are inside the paths, and are
 * removed again before anything is thrown, as is a path that did not exist before.
 */
export async function extractConfined(archive: string, paths: string[], timeoutMs: number): Promise<void> {
  const handle = await open(archive, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    if (!(await handle.stat()).isFile()) throw new EntryRefused(`${archive} is not a regular file`);
    const workspace = process.cwd();
    const absent = paths.map((p) => resolve(workspace, p)).filter((p) => !existsSync(p));
    const watcher = new TarMemberWatcher(false, confineMembers(workspace, paths));
    try {
      await extract(handle.fd, archive, watcher, timeoutMs);
    } catch (error) {
      // Whatever stopped tar (a refused member, damaged bytes, a full disk), the files it wrote until then must
      // not look restored: one may be cut short.
      const left = leftovers(await undoExtraction(workspace, watcher.members, absent));
      if (error instanceof Error) error.message += left;
      throw error;
    }
  } finally {
    await handle.close();
  }
}

/** `zstd -d < fd | tar -x`, every member shown to `watcher` first; throws once both children are gone. */
async function extract(
  fd: number,
  archive: string,
  watcher: TarMemberWatcher,
  timeoutMs: number,
): Promise<void> {
  // In the C locale GNU tar writes pax names with the very bytes the watcher checked.
  const env = { ...childEnv(), LC_ALL: 'C' };
  const [zstd, tar] = await launchPair(
    ['zstd', () => spawn('zstd', ['-d', '--long=30', '-c'], { stdio: [fd, 'pipe', 'pipe'], env })],
    ['tar', () => spawn('tar', ['-x', '-P', '-f', '-'], { stdio: ['pipe', 'ignore', 'pipe'], env })],
  );
  const exits = Promise.all([exitOf('zstd', zstd), exitOf('tar', tar)]);
  const kill = () => {
    zstd.kill('SIGKILL');
    tar.kill('SIGKILL');
  };
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    kill();
  }, timeoutMs);
  // tar exits at the end-of-archive block without reading the rest of its input, and node then destroys its
  // stdin, maybe before our last write called back (that failed about 1 restore in 7 under load). Yet zstd must
  // be read to its end: its exit status (the frame checksum) only comes once all its output was taken. So past
  // that block bytes are drained, not handed on, and tar's input going away is no failure.
  const stdin = tar.stdin!;
  stdin.on('error', () => undefined); // reported to the callbacks below
  const unlessEnded = (done: (error?: Error | null) => void) => (error?: Error | null) =>
    done(error && !watcher.ended ? error : null);
  const toTar = new Writable({
    write(chunk: Buffer, _encoding, done) {
      if (watcher.ended) return done();
      try {
        watcher.inspect(chunk);
      } catch (error) {
        return done(error as Error);
      }
      stdin.write(chunk, unlessEnded(done));
    },
    final(done) {
      stdin.end();
      finished(stdin, unlessEnded(done));
    },
  });
  let broken: unknown;
  try {
    await pipeline(zstd.stdout!, toTar);
  } catch (error) {
    broken = error;
    // Past the end-of-archive block both children end on their own, and kills would spoil their exit codes.
    if (!watcher.ended) kill();
  }
  const [unzstd, untar] = await exits.finally(() => clearTimeout(timer));
  // A refusal is the cause; else what a child said is (a broken pipe only follows from it).
  if (watcher.failure) throw watcher.failure;
  if (timedOut) throw new Error(`cannot extract ${archive}: not done after ${formatDuration(timeoutMs)}`);
  // Killed by us after the pipe broke (or at the timeout): the children's own complaints come first.
  const killed = broken !== undefined;
  const problem =
    ownFailure(unzstd, killed) ??
    ownFailure(untar, killed) ??
    (broken === undefined ? undefined : errorMessage(broken));
  if (problem) throw new Error(`cannot extract ${archive}: ${problem}`);
}
