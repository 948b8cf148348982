import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ActionsHost, CliHost } from '../../src/core/host.js';
import { InputError, MapInputSource, readRequiredString } from '../../src/core/inputs.js';
import {
  ActionError,
  EXIT_BAD_INPUT,
  EXIT_FAILED,
  EXIT_OK,
  runMain,
  runPost,
  type ActionDefinition,
} from '../../src/core/run.js';
import { workflowCommands, type LogLine } from '../support/harness.js';

/** What could look like a command to the runner: a line starting with `::` after blanks, or `##[` anywhere. */
const COMMAND_LIKE_TEXT = /(^|[\r\n])[\s\u0085]*::|##\[/;

function cliHost(values: Record<string, string> = {}) {
  const log: string[] = [];
  const out: string[] = [];
  const host = new CliHost({
    inputs: new MapInputSource(values),
    verbose: true,
    log: (l) => log.push(l),
    out: (l) => out.push(l),
  });
  return { host, log, out };
}

function action(main: ActionDefinition<string>['main'], post?: ActionDefinition<string>['post']) {
  return {
    name: 'demo',
    readInputs: (src) => readRequiredString(src, 'name'),
    main,
    post,
  } as ActionDefinition<string>;
}

describe('CliHost', () => {
  it('prints outputs on stdout, logs on the other stream, and redacts secrets everywhere', async () => {
    const { host, log, out } = cliHost();
    host.setSecret('hunter2');
    host.info('password is hunter2');
    host.setOutput('token', 'hunter2-suffix');
    host.exportVariable('ICI_TEST_EXPORT', 'a b');
    await host.group('phase', async () => host.warning('careful'));
    expect(log).toEqual(['password is ***', "export ICI_TEST_EXPORT='a b'", '== phase', 'warning: careful']);
    expect(out).toEqual(['token=***-suffix']);
    expect(process.env.ICI_TEST_EXPORT).toBe('a b');
    delete process.env.ICI_TEST_EXPORT;
  });

  it('keeps state between main and post in memory', () => {
    const { host } = cliHost();
    expect(host.getState('x')).toBe('');
    host.saveState('x', '1');
    expect(host.getState('x')).toBe('1');
  });
});

describe('runMain / runPost', () => {
  it('runs main with parsed inputs', async () => {
    const { host } = cliHost({ name: 'n1' });
    let seen = '';
    const code = await runMain(
      action(async (_h, inputs) => {
        seen = inputs;
      }),
      host,
    );
    expect(code).toBe(EXIT_OK);
    expect(seen).toBe('n1');
  });

  it('reports a user mistake as bad input, naming the input, with exit code 2', async () => {
    const { host, log } = cliHost();
    const code = await runMain(
      action(async () => undefined),
      host,
    );
    expect(code).toBe(EXIT_BAD_INPUT);
    expect(log).toEqual(["error: Input 'name': is required but was not given."]);
  });

  it('reports other failures with exit code 1; a stack only for unexpected errors, in debug', async () => {
    const expected = cliHost({ name: 'x' });
    expect(
      await runMain(
        action(async () => {
          throw new ActionError('registry said no');
        }),
        expected.host,
      ),
    ).toBe(EXIT_FAILED);
    expect(expected.log).toEqual(['error: demo failed: registry said no']);

    const bug = cliHost({ name: 'x' });
    expect(
      await runMain(
        action(async () => {
          throw new TypeError('undefined is not a function');
        }),
        bug.host,
      ),
    ).toBe(EXIT_FAILED);
    expect(bug.log[0]).toBe('error: demo failed: undefined is not a function');
    expect(bug.log[1]).toMatch(/^debug: TypeError: undefined is not a function\n\s+at /);
  });

  it('an InputError thrown inside main is still a user mistake', async () => {
    const { host } = cliHost({ name: 'x' });
    const code = await runMain(
      action(async () => {
        throw new InputError('path', 'does not exist.');
      }),
      host,
    );
    expect(code).toBe(EXIT_BAD_INPUT);
  });

  it('post never fails: errors become warnings', async () => {
    const { host, log } = cliHost();
    const code = await runPost(
      action(
        async () => undefined,
        async () => {
          throw new Error('socket already gone');
        },
      ),
      host,
    );
    expect(code).toBe(EXIT_OK);
    expect(log[0]).toBe('warning: demo post step: socket already gone');
    expect(
      await runPost(
        action(async () => undefined),
        host,
      ),
    ).toBe(EXIT_OK);
  });
});

/** Runs `fn` with process.stdout captured (what a runner reads), as log lines. */
async function runnerStdout(fn: () => unknown): Promise<LogLine[]> {
  const chunks: string[] = [];
  const write = process.stdout.write;
  process.stdout.write = ((chunk: string | Uint8Array) => {
    chunks.push(typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
    return true;
  }) as typeof process.stdout.write;
  try {
    await fn();
  } finally {
    process.stdout.write = write;
  }
  return chunks
    .join('')
    .split('\n')
    .map((text) => ({ stream: 'stdout' as const, text }));
}

/** Text an attacker controls: every way the runner could be made to read a line as a command. */
const HOSTILE = [
  'disk.qcow2.zst\n::add-mask::sha256\n::set-output name=image-path::/evil',
  'title\r::save-state name=push-multi-tag::{"authDir":"/home"}',
  '  \t::set-env name=NODE_OPTIONS::--require /tmp/x',
  '\u0085::add-path::/tmp/evil',
  'product ##[set-output name=digest;]evil',
  '::STOP-COMMANDS::abc\n::abc::\n::error::forged',
  '%0A::add-mask::escaped-newline',
];

describe('ActionsHost output cannot carry workflow commands from outside', () => {
  it.each(HOSTILE)('info(%j) prints the text but no command the runner would run', async (text) => {
    const host = new ActionsHost();
    const lines = await runnerStdout(() => host.info(text));
    expect(workflowCommands(lines).map((c) => c.name)).toEqual(
      COMMAND_LIKE_TEXT.test(text) ? ['stop-commands', 'resume-commands'] : [],
    );
    expect(lines.map((l) => l.text).join('\n')).toContain(text.split(/\r|\n/).pop());
  });

  it('warning, error, debug and group titles are escaped command data: one command each', async () => {
    const host = new ActionsHost();
    const text = HOSTILE.join('\n');
    const lines = await runnerStdout(() => {
      host.warning(text);
      host.error(text);
      host.debug(text);
      return host.group(text, async () => undefined);
    });
    expect(workflowCommands(lines).map((c) => [c.name, c.data])).toEqual([
      ['warning', text],
      ['error', text],
      ['debug', text],
      ['group', text],
      ['endgroup', ''],
    ]);
  });

  it('a plain line passes unchanged', async () => {
    const lines = await runnerStdout(() =>
      new ActionsHost().info('Pushed 3 refs in 1.2 s (sha256:abc :: ok).'),
    );
    expect(lines.map((l) => l.text)).toEqual(['Pushed 3 refs in 1.2 s (sha256:abc :: ok).', '']);
  });

  it('masks a multi-line secret as a whole and line by line (the runner masks output one line at a time)', async () => {
    const key = '-----BEGIN KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nAAAEbm9uZQAAAA\n}\n-----END KEY-----\n';
    const lines = await runnerStdout(() => new ActionsHost().setSecret(key));
    const masks = workflowCommands(lines).map((c) => c.data);
    expect(masks).toEqual([
      key,
      '-----BEGIN KEY-----',
      'b3BlbnNzaC1rZXktdjEAAAAA',
      'AAAEbm9uZQAAAA',
      '-----END KEY-----',
    ]);
  });
});

describe('ActionsHost state', () => {
  const saved = { ...process.env };
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'ici-unit-state-'));
    process.env.GITHUB_STATE = join(dir, 'state');
    writeFileSync(process.env.GITHUB_STATE, '');
  });
  afterEach(() => {
    process.env = { ...saved };
    rmSync(dir, { recursive: true, force: true });
  });

  it('main reads back what it saved earlier in the same process (no STATE_* exists in main)', () => {
    const host = new ActionsHost();
    expect(host.getState('ici-scratch-dirs')).toBe('');
    host.saveState('ici-scratch-dirs', '["/tmp/ici-abc"]');
    expect(host.getState('ici-scratch-dirs')).toBe('["/tmp/ici-abc"]');
    expect(readFileSync(process.env.GITHUB_STATE!, 'utf8')).toContain('["/tmp/ici-abc"]');
  });

  it('post reads what main saved, and a value post clears stays cleared', () => {
    process.env['STATE_ici-cache-plan'] = '{"paths":[],"key":"k"}';
    const host = new ActionsHost();
    expect(host.getState('ici-cache-plan')).toBe('{"paths":[],"key":"k"}');
    host.saveState('ici-cache-plan', '');
    expect(host.getState('ici-cache-plan')).toBe('');
  });
});

describe('CliHost lines are command-free too (the CLI may run inside a workflow step)', () => {
  it('wraps hostile lines on both streams and redacts each line of a multi-line secret', () => {
    const { host, log, out } = cliHost();
    host.setSecret('first-secret-line\nsecond-secret-line');
    host.info('child said:\n::add-mask::x\nsecond-secret-line');
    host.setOutput('image-path', '/cache/disk\n::set-output name=x::y');
    const lines = [...log, ...out]
      .flatMap((t) => t.split('\n'))
      .map((text) => ({ stream: 'stdout' as const, text }));
    expect(workflowCommands(lines).map((c) => c.name)).toEqual([
      'stop-commands',
      'resume-commands',
      'stop-commands',
      'resume-commands',
    ]);
    expect(log.join('\n')).not.toContain('second-secret-line');
    expect(log.join('\n')).toContain('\n***\n');
  });
});
