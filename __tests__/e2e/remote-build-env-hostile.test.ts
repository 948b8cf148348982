/**
 * remote-build-env (mode local) in a hostile world, with real podman services and real caches: builds that leave
 * odd things in their cache mounts, entries someone else saved, and a service whose log carries command text.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { createHash } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { chmod, lstat, mkdir, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { restoreCacheMounts } from '../../src/actions/remote-build-env/cache-mounts.js';
import { CACHE_DIR_ENV } from '../../src/core/cache.js';
import { saveToDirCache } from '../../src/core/cache-dir.js';
import { exec } from '../../src/core/exec.js';
import { laterRun } from '../support/cache-service.js';
import { cliHost } from '../support/cache-files.js';
import { importBusyboxImage } from '../support/images.js';
import { createPodmanTestEnv, type PodmanTestEnv } from '../support/podman.js';
import { buildahCacheDir, testUser } from '../support/podman-matrix.js';
import { startSplitJobOn, type SplitJob } from '../support/split-job.js';

const ACTION = 'remote-build-env';

let pm: PodmanTestEnv;
let image: string;
const temps: string[] = [];
const jobs: SplitJob[] = [];

/** Short (socket paths), under the run's TMPDIR (the leftovers check lists it), and removed after the tests. */
function newTemp(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  temps.push(dir);
  return dir;
}

async function startJob(
  inputs: Record<string, string>,
  env: Record<string, string>,
  runnerTemp: string,
): Promise<SplitJob> {
  const job = await startSplitJobOn(pm, ACTION, inputs, env, runnerTemp);
  jobs.push(job);
  return job;
}

/** Builds `steps` (RUN lines, each with the cache mount at /c) against the job's service; returns its stdout. */
async function build(job: SplitJob, name: string, steps: string[]): Promise<string> {
  const ctx = join(pm.dir, `ctx-${name}`);
  await mkdir(ctx, { recursive: true });
  const runs = steps.map((s) => `RUN --mount=type=cache,target=/c ${s}\n`).join('');
  await writeFile(join(ctx, 'Containerfile'), `FROM ${image}\n${runs}`);
  const r = await pm.podman(['--remote', 'build', '--no-cache', ctx], { env: job.main.exportedEnv });
  return r.stdout;
}

beforeAll(async () => {
  pm = await createPodmanTestEnv();
  image = await importBusyboxImage(pm);
});
afterAll(async () => {
  for (const job of jobs) if (!job.posted) await job.post();
  await pm?.remove();
  for (const dir of temps) await rm(dir, { recursive: true, force: true });
});

describe('remote-build-env, mode local, hostile cache mounts (real podman, directory cache)', () => {
  it('a build that leaves a FIFO, a device node and a hard-linked symlink in its cache mount: post saves the rest, and the next run restores it', async () => {
    const runnerTemp = newTemp('ici-rh-');
    const env = { IMAGE_CI_CACHE_DIR: newTemp('ici-rhc-') };
    const inputs = { 'cache-mounts': 'true', 'cache-key': 'hostile-fifo' };
    const a = await startJob(inputs, env, runnerTemp);
    expect(a.main.main.exitCode).toBe(0);
    await build(a, 'fifo', [
      'echo kept >/c/kept && mkfifo /c/pipe && mknod /c/null c 1 3 && ln -s kept /c/link && ln /c/link /c/link2',
      // A name that would put a workflow command on a line of its own: the log shows it as text, its newline as ?.
      'mkfifo "/c/$(printf "x\\n::add-mask::planted")"',
    ]);
    const postA = await a.post();
    expect(postA.exitCode).toBe(0);
    expect(postA.warnings).toEqual([]);
    const text = postA.lines.map((l) => l.text).join('\n');
    expect(text).toMatch(/not saving 3 FIFO.*: c\/null, c\/pipe, c\/x\?::add-mask::planted\./);
    expect(postA.masks).toEqual([]);

    temps.push(...(await laterRun([runnerTemp])));
    const b = await startJob(inputs, env, runnerTemp);
    // A step that dies before its error boundary (a module missing while dist/ is rebuilt beside the test) logs
    // no ::error:: and sets no output: then its raw output says why.
    if (b.main.main.exitCode !== 0) {
      throw new Error(
        `main exited ${b.main.main.exitCode}:\n${b.main.main.lines.map((l) => l.text).join('\n')}`,
      );
    }
    expect(b.main.errors).toEqual([]);
    expect(b.main.warnings).toEqual([]);
    expect(b.main.outputs['cache-hit']).toBe('true');
    const listing = await build(b, 'fifo-read', [
      `echo "listing: $(ls /c | grep -v lockfile | tr '\\n' ' ')"`,
    ]);
    expect(listing).toContain('listing: kept link link2 \n');
    await b.post();
  });

  it('a tree deeper than PATH_MAX in a cache mount: post saves all but what lies deeper, removes it all (and the stage), and the next run restores the rest', async () => {
    const runnerTemp = newTemp('ici-rh-');
    const env = { IMAGE_CI_CACHE_DIR: newTemp('ici-rhc-') };
    const inputs = { 'cache-mounts': 'true', 'cache-key': 'hostile-deep' };
    const a = await startJob(inputs, env, runnerTemp);
    // 5400 bytes of path: what `mkdir d; cd d` 600 times in a RUN step leaves, made from outside, faster.
    const half = Array(300).fill('aaaaaaaa').join('/');
    const deep = `mkdir -p ${half} && cd ${half} && mkdir -p ${half} && cd ${half} && touch f`;
    await exec(
      'bash',
      [
        '-c',
        `mkdir -p "$0/c" && echo kept > "$0/c/kept" && cd "$0/c" && ${deep}`,
        a.main.outputs['cache-dir']!,
      ],
      { timeoutMs: 60_000 },
    );
    const post = await a.post();
    expect(post.exitCode).toBe(0);
    // Before (e127448): 'cache mounts not saved: ENAMETOOLONG: name too long, lstat ...', for one deep dir.
    expect(post.warnings).toEqual([]);
    expect(post.lines.map((l) => l.text).join('\n')).toMatch(/not saving 1 FIFO.*: …[a/]+\./);
    expect(await readdir(runnerTemp)).toEqual([]);
    const b = await startJob(inputs, env, runnerTemp);
    expect(b.main.main.exitCode).toBe(0);
    expect(b.main.outputs['cache-hit']).toBe('true');
    expect(await readFile(join(b.main.outputs['cache-dir']!, 'c/kept'), 'utf8')).toBe('kept\n');
    expect((await b.post()).exitCode).toBe(0);
  });

  it('a build that leaves a name that is no UTF-8 (with an escape sequence) in its cache mount: post saves the rest, its line shows the name printable, and the next run restores it', async () => {
    const runnerTemp = newTemp('ici-rh-');
    const env = { IMAGE_CI_CACHE_DIR: newTemp('ici-rhc-') };
    const inputs = { 'cache-mounts': 'true', 'cache-key': 'hostile-name' };
    const a = await startJob(inputs, env, runnerTemp);
    // Beside it, names that are UTF-8 but odd (a newline, 255 bytes): saved and restored as they are.
    await build(a, 'name', [
      `echo kept >/c/kept && touch "/c/$(printf 'x\\033[2J\\377')" && echo nl > "/c/$(printf 'a\\nb')" && ` +
        `echo long > "/c/$(printf '%0255d' 0)"`,
    ]);
    const post = await a.post();
    expect(post.exitCode).toBe(0);
    // Before: the whole save was given up ('cache mounts not saved: ENOENT: ... lstat ...'), for one odd name.
    expect(post.warnings).toEqual([]);
    const text = post.lines.map((l) => l.text).join('\n');
    expect(text).toMatch(/not saving 1 FIFO.*: c\/x\?\[2J\uFFFD\./);
    expect(text).not.toContain('\u001b');

    temps.push(...(await laterRun([runnerTemp])));
    const b = await startJob(inputs, env, runnerTemp);
    expect(b.main.warnings).toEqual([]);
    expect(b.main.outputs['cache-hit']).toBe('true');
    const restored = join(b.main.outputs['cache-dir']!, 'c');
    expect((await readdir(restored)).sort()).toEqual(['0'.repeat(255), 'a\nb', 'kept']);
    expect(await readFile(join(restored, 'a\nb'), 'utf8')).toBe('nl\n');
    expect(await readFile(join(restored, '0'.repeat(255)), 'utf8')).toBe('long\n');
    expect((await b.post()).exitCode).toBe(0);
  });

  it('a build that plants a symlink by the owners manifest’s name at the top of the cache-mount dir (a cache mount with id=.): post does not read through it', async () => {
    const runnerTemp = newTemp('ici-rh-');
    const secret = join(newTemp('ici-rhv-'), 'shadow');
    await writeFile(secret, 'root:$y$j9T$planted:19000:0:99999:7:::\n');
    const job = await startJob(
      { 'cache-mounts': 'true', 'cache-key': 'hostile-manifest' },
      { IMAGE_CI_CACHE_DIR: newTemp('ici-rhc-') },
      runnerTemp,
    );
    const ctx = join(pm.dir, 'ctx-manifest');
    await mkdir(ctx);
    await writeFile(
      join(ctx, 'Containerfile'),
      `FROM ${image}\nRUN --mount=type=cache,id=.,target=/c ln -s ${secret} /c/.image-ci-owners.json\n`,
    );
    await pm.podman(['--remote', 'build', '--no-cache', ctx], { env: job.main.exportedEnv });
    const post = await job.post();
    expect(post.exitCode).toBe(0);
    expect(post.warnings).toEqual([
      expect.stringMatching(
        /^cache mounts not saved: cannot read \S+\/\.image-ci-owners\.json: not a regular file\.$/,
      ),
    ]);
    expect(post.lines.map((l) => l.text).join('\n')).not.toContain('root:');
  });

  it('a cache-dir replaced by a symlink before post: post neither saves nor tidies up what it points at', async () => {
    const runnerTemp = newTemp('ici-rh-');
    const outside = newTemp('ici-rhv-');
    const cacheDir = newTemp('ici-rhc-');
    const job = await startJob(
      { 'cache-mounts': 'true', 'cache-key': 'hostile-swap' },
      { IMAGE_CI_CACHE_DIR: cacheDir },
      runnerTemp,
    );
    const live = job.main.outputs['cache-dir']!;
    await build(job, 'swap', ['touch /c/written']);
    await exec('mkfifo', [join(outside, 'pipe')], { timeoutMs: 10_000 });
    await rm(live, { recursive: true });
    await symlink(outside, live);
    const post = await job.post();
    expect(post.exitCode).toBe(0);
    expect(post.warnings).toEqual([
      `cache mounts not saved: ${live} is no directory any more (a symlink or a file).`,
    ]);
    expect(await readdir(outside)).toEqual(['pipe']);
    expect(await readdir(cacheDir).catch(() => [])).not.toContain('entries');
  });
});

/**
 * Saves, as someone sharing the cache volume could, an entry for `cacheKey` whose cache-mount dir is `plant`ed
 * (made by the callback) at the path remote-build-env restores from `runnerTemp`; returns the key.
 */
async function plantEntry(
  cacheDir: string,
  runnerTemp: string,
  cacheKey: string,
  plant: (path: string) => Promise<void>,
): Promise<string> {
  const stage = join(
    runnerTemp,
    `ici-rbe-${createHash('sha256').update(cacheKey).digest('hex').slice(0, 8)}`,
  );
  const path = buildahCacheDir(pm.variant, stage);
  await mkdir(stage, { recursive: true });
  await plant(path);
  const key = `${cacheKey}-Linux-${process.arch === 'arm64' ? 'ARM64' : 'X64'}-planted`;
  const saved = await saveToDirCache(cliHost().host, cacheDir, [path], key);
  expect(saved.outcome).toBe('saved');
  await rm(stage, { recursive: true });
  return key;
}

describe('remote-build-env, mode local, cache entries saved by someone else (real podman, directory cache)', () => {
  it.each([
    ['a symlink to a dir outside', (path: string, outside: string) => symlink(outside, path)],
    ['a regular file', (path: string) => writeFile(path, 'not a dir\n')],
  ])(
    'an entry whose cache-mount dir itself is %s is not restored: the service gets a dir of its own',
    async (_, plant) => {
      const runnerTemp = newTemp('ici-rh-');
      const outside = newTemp('ici-rhv-');
      const cacheDir = newTemp('ici-rhc-');
      const key = await plantEntry(cacheDir, runnerTemp, 'hostile-root', (p) => plant(p, outside));
      const job = await startJob(
        { 'cache-mounts': 'true', 'cache-key': 'hostile-root' },
        { IMAGE_CI_CACHE_DIR: cacheDir },
        runnerTemp,
      );
      expect(job.main.main.exitCode).toBe(0);
      expect(job.main.warnings).toEqual([expect.stringContaining(`cache mounts from ${key} not used`)]);
      expect(job.main.outputs['cache-hit']).toBe('false');
      await build(job, 'root', ['touch /c/written']);
      expect((await lstat(job.main.outputs['cache-dir']!)).isDirectory()).toBe(true);
      expect(await readdir(outside)).toEqual([]);
      expect((await job.post()).exitCode).toBe(0);
    },
  );

  it('symlinks in an entry that lead out of the cache-mount dir are removed: buildah would follow them and mount a host dir into the build', async () => {
    const runnerTemp = newTemp('ici-rh-');
    const outside = newTemp('ici-rhv-');
    const cacheDir = newTemp('ici-rhc-');
    await writeFile(join(outside, 'host-file'), 'host\n');
    const key = await plantEntry(cacheDir, runnerTemp, 'hostile-links', async (p) => {
      await mkdir(join(p, 'd', 'sub'), { recursive: true });
      await symlink(outside, join(p, 'c'));
      await symlink('../../..', join(p, 'd', 'up'));
      await symlink('sub', join(p, 'd', 'kept'));
      await symlink('gone', join(p, 'd', 'nowhere'));
      // Inside, read as text; outside, followed by the kernel (y is d): only the latter counts.
      await symlink('..', join(p, 'd', 'sub', 'y'));
      await symlink('y/../..', join(p, 'd', 'sub', 'x'));
    });
    const job = await startJob(
      { 'cache-mounts': 'true', 'cache-key': 'hostile-links' },
      { IMAGE_CI_CACHE_DIR: cacheDir },
      runnerTemp,
    );
    expect(job.main.warnings).toEqual([
      `cache mounts from ${key}: removed 4 symlink(s) leading out of the cache-mount dir (buildah would follow them to mount what they point at into builds): c, d/nowhere, d/sub/x, d/up.`,
    ]);
    expect(job.main.outputs['cache-hit']).toBe('true');
    await build(job, 'links', ['touch /c/written']);
    expect((await readdir(join(job.main.outputs['cache-dir']!, 'd'))).sort()).toEqual(['kept', 'sub']);
    expect(await readdir(join(job.main.outputs['cache-dir']!, 'd', 'sub'))).toEqual(['y']);
    expect(await readdir(outside)).toEqual(['host-file']);
    expect((await job.post()).exitCode).toBe(0);
  });
  it('setuid and setgid bits in an entry are cleared: a planted setuid-root file would make root of a build step run as another user', async () => {
    const runnerTemp = newTemp('ici-rh-');
    const cacheDir = newTemp('ici-rhc-');
    const key = await plantEntry(cacheDir, runnerTemp, 'hostile-suid', async (p) => {
      await mkdir(join(p, 'c'), { recursive: true });
      for (const [name, mode] of [
        ['suid', 0o4755],
        ['sgid', 0o2755],
        ['plain', 0o755],
      ] as const) {
        await writeFile(join(p, 'c', name), '#!/bin/sh\n');
        await chmod(join(p, 'c', name), mode);
      }
    });
    const job = await startJob(
      { 'cache-mounts': 'true', 'cache-key': 'hostile-suid' },
      { IMAGE_CI_CACHE_DIR: cacheDir },
      runnerTemp,
    );
    expect(job.main.warnings).toEqual([
      `cache mounts from ${key}: cleared the setuid/setgid bits of 2 file(s): c/sgid, c/suid.`,
    ]);
    const live = join(job.main.outputs['cache-dir']!, 'c');
    const modes = async (name: string) => (await stat(join(live, name))).mode & 0o7777;
    expect([await modes('suid'), await modes('sgid'), await modes('plain')]).toEqual([0o755, 0o755, 0o755]);
    expect((await job.post()).exitCode).toBe(0);
  });
});

describe('remote-build-env cache mounts restored by a non-root runner (directory cache; in process, as the test user)', () => {
  it('an entry holding a directory its user cannot read (mode 000) is not used: main goes on without it instead of failing', async () => {
    const user = testUser();
    const runnerTemp = newTemp('ici-rh-');
    const cacheDir = newTemp('ici-rhc-');
    const key = await plantEntry(cacheDir, runnerTemp, 'hostile-locked', async (p) => {
      await mkdir(join(p, 'locked'), { recursive: true });
      await writeFile(join(p, 'locked', 'f'), 'f\n');
      await chmod(join(p, 'locked'), 0);
    });
    const stage = join(
      runnerTemp,
      `ici-rbe-${createHash('sha256').update('hostile-locked').digest('hex').slice(0, 8)}`,
    );
    const live = join(runnerTemp, 'scratch', 'tmp', 'buildah-cache');
    await mkdir(dirname(live), { recursive: true });
    // The runner's user owns the job's dirs and the cache volume; the dirs above them must let it through.
    await exec('chown', ['-R', `${user.uid}:${user.gid}`, runnerTemp, cacheDir], { timeoutMs: 10_000 });
    const above = [dirname(tmpdir()), tmpdir()];
    const modes = await Promise.all(above.map(async (d) => (await stat(d)).mode & 0o7777));
    await Promise.all(above.map((d) => chmod(d, 0o755)));
    const { host, log } = cliHost();
    const { seteuid, setegid } = process;
    if (!seteuid || !setegid) throw new Error('switching the effective user needs a POSIX process');
    process.env[CACHE_DIR_ENV] = cacheDir;
    setegid(user.gid);
    seteuid(user.uid);
    let state;
    try {
      state = await restoreCacheMounts(host, { stage, live }, 'hostile-locked', []);
    } finally {
      seteuid(0);
      setegid(0);
      delete process.env[CACHE_DIR_ENV];
      await Promise.all(above.map((d, i) => chmod(d, modes[i]!)));
    }
    expect(state.matchedKey).toBeUndefined();
    expect(log).toContainEqual(
      expect.stringMatching(
        new RegExp(`^warning: cache mounts from ${key} not used, starting without them: EACCES`),
      ),
    );
    expect(await readdir(dirname(live))).toEqual([]);
  });
});

describe('remote-build-env, mode local, what the service logs (real podman)', () => {
  it('a service log shown after a server error keeps build args (a token, percent-escaped past the runner masking) out of the job log', async () => {
    const a = await startJob({}, {}, newTemp('ici-rh-'));
    const ctx = join(pm.dir, 'ctx-arg');
    await mkdir(ctx, { recursive: true });
    await writeFile(join(ctx, 'Containerfile'), `FROM ${image}\nARG TOKEN\nRUN true\n`);
    const env = a.main.exportedEnv;
    await pm.podman(['--remote', 'build', '--build-arg', 'TOKEN=Zq7tok/en+val=ue', ctx], { env });
    // Killing a container that never ran is answered with a 500: the sign post shows the whole log by.
    await pm.podman(['--remote', 'create', '--name', 'never-ran', image, 'true'], { env });
    await pm.podman(['--remote', 'kill', 'never-ran'], { env, allowFailure: true });
    const post = await a.post();
    const log = post.lines.map((l) => l.text).join('\n');
    expect(log).toContain('podman service log (the service answered a request with a server error)');
    expect(log).toMatch(/"POST \/v[\d.]+\/libpod\/build\?… HTTP\/1\.1" 200 /);
    expect(log).not.toContain('Zq7');
  });
});
