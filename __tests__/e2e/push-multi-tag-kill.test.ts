/**
 * push-multi-tag's main SIGKILLed right after each of its changes to the filesystem (a cancelled job, an OOM
 * kill), each time followed by post as a separate process, as the runner runs it. The push copies from a
 * `docker://` source with a password, so main writes the isolated auth file skopeo reads and a scratch layout
 * skopeo exports into: whatever moment main died at, post must leave nothing in RUNNER_TEMP, and the password
 * must be on disk nowhere.
 */
import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mapLimit } from '../../src/core/pool.js';
import { REPO_ROOT, runAction } from '../support/harness.js';
import { leftovers } from '../support/leftovers.js';
import { generateLayout } from '../support/oci-layout.js';
import { startRegistry, type RegistryService } from '../support/registry.js';
import { startSplitJob } from '../support/split-job.js';

const PRELOAD = join(REPO_ROOT, '__tests__/support/crash-after-change.mjs');
/** At most this many kill points, spread over all of main's changes (each costs a main and a post). */
const POINTS = 16;

let work: string;
let registry: RegistryService;
let source: string;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'ici-push-kill-'));
  registry = await startRegistry({ auth: 'htpasswd' });
  const layout = generateLayout(join(work, 'layout'), { layers: [200_000, 50_000] });
  const seeded = await runAction({
    action: 'push-multi-tag',
    inputs: {
      source: layout.transportRef,
      repositories: `${registry.host}/kill/seed`,
      tags: '1.0',
      username: registry.username!,
      password: registry.password!,
      'insecure-registries': registry.host,
    },
  });
  expect(seeded.main.exitCode).toBe(0);
  source = `docker://${registry.host}/kill/seed:1.0`;
});
afterAll(async () => {
  await registry?.stop();
  rmSync(work, { recursive: true, force: true });
});

/** Every file under `dir` whose bytes hold `secret`. */
function filesHolding(dir: string, secret: string): string[] {
  // grep exits 1 when nothing holds it.
  const out = spawnSync('grep', ['-rlF', '--', secret, dir], { encoding: 'utf8' }).stdout.trim();
  return out ? out.split('\n') : [];
}

function job(name: string, crashAfter: number, changesFile?: string) {
  const root = join(work, name);
  const dirs = { runnerTemp: join(root, 'temp'), home: join(root, 'home'), workspace: join(root, 'ws') };
  for (const d of Object.values(dirs)) mkdirSync(d, { recursive: true });
  const crash = {
    NODE_OPTIONS: `--import ${PRELOAD}`,
    IMAGE_CI_TEST_CRASH_AFTER: String(crashAfter),
    ...(changesFile ? { IMAGE_CI_TEST_CHANGES_FILE: changesFile } : {}),
  };
  return {
    root,
    runnerTemp: dirs.runnerTemp,
    start: () =>
      startSplitJob({
        action: 'push-multi-tag',
        inputs: {
          source,
          'tls-verify': 'false',
          repositories: `${registry.host}/kill/app`,
          tags: `${name}, latest`,
          username: registry.username!,
          password: registry.password!,
          'insecure-registries': registry.host,
        },
        ...dirs,
        env: crash,
        keepInRunnerTemp: 'unchecked',
      }),
  };
}

it('main SIGKILLed after each of its filesystem changes, then post: nothing in RUNNER_TEMP, the password on disk nowhere', async () => {
  // One whole run counts main's changes (and shows the push works as set up).
  const changesFile = join(work, 'changes');
  const whole = job('whole', 0, changesFile);
  const wholeJob = await whole.start();
  expect(wholeJob.main.main.exitCode).toBe(0);
  expect((await wholeJob.post({ NODE_OPTIONS: '' })).exitCode).toBe(0);
  expect(await leftovers(whole.runnerTemp)).toEqual([]);
  const changes = Number(readFileSync(changesFile, 'utf8'));
  expect(changes).toBeGreaterThan(5);

  const points = [
    ...new Set(Array.from({ length: POINTS }, (_, i) => 1 + Math.round((i * (changes - 1)) / (POINTS - 1)))),
  ];
  // As typed, and as auth files keep it (base64 of user:password).
  const secrets = [
    registry.password!,
    Buffer.from(`${registry.username!}:${registry.password!}`).toString('base64'),
  ];
  const problems: string[] = [];
  let killed = 0;
  // Two jobs at a time, each on paths of its own (the kill comes from inside main, at that very change).
  await mapLimit(points, 2, async (point) => {
    const j = job(`k${point}`, point);
    const split = await j.start();
    if (split.main.main.exitCode === 137) killed++;
    const post = await split.post({ NODE_OPTIONS: '' });
    const where = `killed after change ${point}/${changes} (main exit ${split.main.main.exitCode})`;
    if (post.exitCode !== 0) problems.push(`${where}: post exited ${post.exitCode}`);
    const left = await leftovers(j.runnerTemp);
    if (left.length) problems.push(`${where}: ${left.join('; ')}`);
    for (const secret of secrets) {
      const holding = filesHolding(j.root, secret);
      if (holding.length) problems.push(`${where}: the password is in ${holding.join(', ')}`);
      if (JSON.stringify(split.main.main.state).includes(secret)) problems.push(`${where}: in the state`);
    }
  });
  expect(problems).toEqual([]);
  // The sweep killed main (else it proved nothing about kills).
  expect(killed).toBeGreaterThan(points.length / 2);
}, 300_000);
