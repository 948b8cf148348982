import { describe, expect, it, jest } from '@jest/globals';
import { CRASH_ENV, CRASH_EXIT_CODE, CrashHook } from '../../src/actions/prune-simplestreams/crash-hook.js';

describe('test-only crash hook', () => {
  it.each([{}, { [CRASH_ENV]: '' }, { [CRASH_ENV]: '0' }, { [CRASH_ENV]: 'abc' }, { [CRASH_ENV]: '-1' }])(
    'is inert with %j',
    (env) => {
      const exit = jest.spyOn(process, 'exit').mockImplementation((() => undefined) as never);
      try {
        const hook = new CrashHook(env);
        for (let i = 0; i < 100; i++) hook.reached(`step ${i}`);
        expect(exit).not.toHaveBeenCalled();
      } finally {
        exit.mockRestore();
      }
    },
  );

  it('exits at exactly the K-th step', () => {
    const exit = jest.spyOn(process, 'exit').mockImplementation((() => undefined) as never);
    const stderr = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      const hook = new CrashHook({ [CRASH_ENV]: '3' });
      hook.reached('a');
      hook.reached('b');
      expect(exit).not.toHaveBeenCalled();
      hook.reached('c');
      expect(exit).toHaveBeenCalledWith(CRASH_EXIT_CODE);
      expect(stderr).toHaveBeenCalledWith(`${CRASH_ENV}: test-only crash after step 3 (c)\n`);
    } finally {
      exit.mockRestore();
      stderr.mockRestore();
    }
  });
});
