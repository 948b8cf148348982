/**
 * Test data for cache round trips: directories of random (incompressible) files, a digest of a directory tree to
 * prove a restore brought back exactly what was saved, a stdout capture for calling @actions/cache in-process
 * (it logs through @actions/core, which writes workflow commands straight to stdout), and a filesystem with
 * reflinks for the directory backend.
 */
import { which } from '@actions/io';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { CliHost } from '../../src/core/host.js';
import { MapInputSource } from '../../src/core/inputs.js';

const MiB = 1024 * 1024;

/** Writes `files` random files of `bytesEach` into `dir` (random data: zstd cannot shrink it). */
export async function fillRandom(dir: string, files: number, bytesEach: number): Promise<void> {
  mkdirSync(dir, { recursive: true });
  for (let i = 0; i < files; i++) {
    const handle = await open(join(dir, `blob-${i}.bin`), 'w');
    try {
      for (let written = 0; written < bytesEach;) {
        const chunk = randomBytes(Math.min(4 * MiB, bytesEach - written));
        await handle.write(chunk);
        written += chunk.length;
      }
    } finally {
      await handle.close();
    }
  }
}

/** sha256 over every file's relative path, mode and content, in name order: equal digests, equal trees. */
export function treeDigest(dir: string): string {
  const hash = createHash('sha256');
  const walk = (d: string): void => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      const st = statSync(p);
      if (st.isDirectory()) {
        hash.update(`d ${relative(dir, p)}\n`);
        walk(p);
      } else {
        hash.update(`f ${relative(dir, p)} ${st.mode & 0o777} ${st.size}\n`);
        hash.update(readFileSync(p));
      }
    }
  };
  walk(dir);
  return hash.digest('hex');
}

/** A job's directories under one base: runner-temp, workspace, home (paths are reused across "runs"). */
export function jobDirs(label: string): {
  base: string;
  runnerTemp: string;
  workspace: string;
  home: string;
} {
  const base = mkdtempSync(join(tmpdir(), `ici-${label}-`));
  const dirs = {
    base,
    runnerTemp: join(base, 'temp'),
    workspace: join(base, 'ws'),
    home: join(base, 'home'),
  };
  for (const d of [dirs.runnerTemp, dirs.workspace, dirs.home]) mkdirSync(d, { recursive: true });
  return dirs;
}

/**
 * Runs fn with process.stdout captured (lines returned, nothing printed), so in-process calls of @actions/cache
 * neither flood the test log nor hide what the library said.
 */
export async function captureStdout<T>(fn: () => Promise<T>): Promise<{ value: T; lines: string[] }> {
  const original = process.stdout.write;
  let text = '';
  process.stdout.write = ((chunk: unknown, ...rest: unknown[]) => {
    text += typeof chunk === 'string' ? chunk : Buffer.from(chunk as Uint8Array).toString('utf8');
    const callback = rest.find((r): r is () => void => typeof r === 'function');
    if (callback) callback();
    return true;
  }) as typeof process.stdout.write;
  try {
    const value = await fn();
    return { value, lines: text.split('\n').filter(Boolean) };
  } finally {
    process.stdout.write = original;
  }
}

/**
 * A small XFS filesystem with reflinks, on a loop device under `base` (needs root and xfsprogs): the Linux
 * filesystem where `copyFile(..., COPYFILE_FICLONE)` shares blocks instead of copying them (ext4 cannot).
 */
export function mountReflinkFs(base: string, sizeMiB = 320): { dir: string; unmount: () => void } {
  const image = join(base, 'reflink-fs.img');
  const dir = join(base, 'reflink-fs');
  mkdirSync(dir, { recursive: true });
  execFileSync('truncate', ['-s', `${sizeMiB}M`, image]);
  execFileSync('mkfs.xfs', ['-q', '-m', 'reflink=1', image]);
  execFileSync('mount', ['-o', 'loop', image, dir]);
  return {
    dir,
    unmount: () => {
      execFileSync('umount', [dir]);
      rmSync(image, { force: true });
    },
  };
}

/** Every variable the cache layer and @actions/cache read: tests set them per describe and put them back. */
const CACHE_ENV = [
  'ACTIONS_CACHE_SERVICE_V2',
  'ACTIONS_RESULTS_URL',
  'ACTIONS_CACHE_URL',
  'ACTIONS_RUNTIME_TOKEN',
  'GITHUB_SERVER_URL',
  'GITHUB_WORKSPACE',
  'RUNNER_TEMP',
  'IMAGE_CI_CACHE_DIR',
  'IMAGE_CI_CACHE_DIR_MAX_SIZE',
  'IMAGE_CI_CACHE_TIMEOUT',
];

/** Saves the cache env now; `use` replaces it (in this process) for in-process calls, `restore` puts it back. */
export function cacheEnv(): { use(env: Record<string, string>): void; restore(): void } {
  const saved = Object.fromEntries(CACHE_ENV.map((k) => [k, process.env[k]]));
  return {
    use(env) {
      for (const k of CACHE_ENV) delete process.env[k];
      Object.assign(process.env, env);
    },
    restore() {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    },
  };
}

/** The CLI's host with its log kept in memory (what an in-process cache call reported). */
export function cliHost(verbose = false): { host: CliHost; log: string[] } {
  const log: string[] = [];
  const host = new CliHost({
    inputs: new MapInputSource({}),
    log: (l) => log.push(l),
    out: () => undefined,
    verbose,
  });
  return { host, log };
}

/**
 * Runs `fn` with shell scripts in front of the real tools on PATH, written to the dir `shims` (`$REAL` in a script
 * is the real tool): a tar that hangs, a zstd that cannot be started, as an unlucky runner meets them.
 */
export async function withShims<T>(
  shims: string,
  scripts: Record<string, string>,
  fn: () => Promise<T>,
): Promise<T> {
  mkdirSync(shims, { recursive: true });
  for (const [tool, body] of Object.entries(scripts)) {
    writeFileSync(join(shims, tool), `#!/bin/sh\nREAL=${await which(tool, true)}\n${body}\n`);
    chmodSync(join(shims, tool), 0o755);
  }
  const path = process.env.PATH;
  process.env.PATH = `${shims}:${path}`;
  try {
    return await fn();
  } finally {
    process.env.PATH = path;
  }
}
