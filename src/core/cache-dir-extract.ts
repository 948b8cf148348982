/**
 * Extracts a directory-backend archive with every member shown to confineMembers before tar gets it, as the
 * Actions cache's stream does. The archive is the volume's content, written by whoever shares the volume, and
 * tar -P writes wherever a member name (or a link it made) points: unchecked, an entry could plant a file anywhere
 * the job can write. The stored archive is opened once, without following a link or blocking (a FIFO), and the
 * same descriptor is what zstd reads.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { confineMembers, EntryRefused } from './cache-confinement.js';
import { childEnv } from './exec.js';
import { errorMessage } from './run.js';
import { TarMemberWatcher } from './tar-members.js';

const STDERR_TAIL = 2000;

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  error?: Error;
}

function exitOf(child: ChildProcess): Promise<Exit> {
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr = (stderr + d.toString('utf8')).slice(-STDERR_TAIL)));
  return new Promise((done) => {
    child.on('error', (error) => done({ code: null, signal: null, stderr, error }));
    child.on('close', (code, signal) => done({ code, signal, stderr }));
  });
}

function failure(name: string, exit: Exit): string | undefined {
  if (exit.error) return `${name}: ${exit.error.message}`;
  if (exit.code === 0) return undefined;
  const why = exit.signal ? `was killed by ${exit.signal}` : `exited with ${exit.code}`;
  return `${name} ${why}: ${exit.stderr.trim().split('\n').join('; ')}`;
}

/**
 * Extracts `archive` (a zstd tar of absolute names, as saveToDirCache writes it) for `paths`. Throws EntryRefused
 * (or a TarFormatError) before tar sees a member outside them; members before it are inside the paths.
 */
export async function extractConfined(archive: string, paths: string[], timeoutMs: number): Promise<void> {
  const handle = await open(archive, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    if (!(await handle.stat()).isFile()) throw new EntryRefused(`${archive} is not a regular file`);
    const watcher = new TarMemberWatcher(false, confineMembers(process.cwd(), paths));
    // In the C locale GNU tar writes pax names with the very bytes the watcher checked.
    const env = { ...childEnv(), LC_ALL: 'C' };
    const zstd = spawn('zstd', ['-d', '--long=30', '-c'], { stdio: [handle.fd, 'pipe', 'pipe'], env });
    const tar = spawn('tar', ['-x', '-P', '-f', '-'], { stdio: ['pipe', 'ignore', 'pipe'], env });
    const exits = Promise.all([exitOf(zstd), exitOf(tar)]);
    const kill = () => {
      zstd.kill('SIGKILL');
      tar.kill('SIGKILL');
    };
    const timer = setTimeout(kill, timeoutMs);
    const inspect = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        try {
          watcher.inspect(chunk);
          done(null, chunk);
        } catch (error) {
          done(error as Error);
        }
      },
    });
    let broken: unknown;
    try {
      await pipeline(zstd.stdout!, inspect, tar.stdin!);
    } catch (error) {
      broken = error;
      kill();
    } finally {
      clearTimeout(timer);
    }
    const [unzstd, untar] = await exits;
    // A refusal is the cause; else what a child said is (a broken pipe only follows from it).
    if (watcher.failure) throw watcher.failure;
    const problem =
      failure('zstd', unzstd) ??
      failure('tar', untar) ??
      (broken === undefined ? undefined : errorMessage(broken));
    if (problem) throw new Error(`cannot extract ${archive}: ${problem}`);
  } finally {
    await handle.close();
  }
}
