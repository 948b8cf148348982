import { describe, expect, it } from '@jest/globals';
import { CliHost } from '../../src/core/host.js';
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
