/**
 * TEST-ONLY crash hook. When IMAGE_CI_TEST_CRASH_AT_STEP=K is set, the process exits abruptly (no cleanup, lock
 * left behind) at the K-th mutation step of a prune, so tests can prove that a prune killed at any point leaves
 * a valid repository and that the next run converges. Without the variable every call is a no-op.
 */
export const CRASH_ENV = 'IMAGE_CI_TEST_CRASH_AT_STEP';
export const CRASH_EXIT_CODE = 86;

export class CrashHook {
  private step = 0;
  private readonly crashAt: number | undefined;

  constructor(env: NodeJS.ProcessEnv = process.env) {
    const raw = env[CRASH_ENV];
    this.crashAt = raw && /^\d+$/.test(raw) && Number(raw) > 0 ? Number(raw) : undefined;
  }

  /** Marks the end of one mutation step; exits here when it is the step the test asked for. */
  reached(what: string): void {
    if (this.crashAt === undefined) return;
    this.step++;
    if (this.step === this.crashAt) {
      process.stderr.write(`${CRASH_ENV}: test-only crash after step ${this.step} (${what})\n`);
      process.exit(CRASH_EXIT_CODE);
    }
  }
}
