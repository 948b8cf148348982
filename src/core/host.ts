/**
 * What an action may do to the world around it. The Actions runner and the CLI each provide one, so action code
 * never calls @actions/core directly and behaves the same in both.
 *
 * Three guarantees live here, once, instead of at every call site:
 * - no text an action logs can start a workflow command (log text is mostly from outside: registry errors and
 *   annotations, file names, child process output);
 * - a secret is masked as a whole and line by line, and registered so exec.ts keeps it out of child envs;
 * - state saved in main is readable again later in the same main, on the runner as in the CLI.
 */
import { randomBytes } from 'node:crypto';
import * as core from '@actions/core';
import { EnvInputSource, type InputSource } from './inputs.js';
import { maskValues, redact, registerSecret } from './secrets.js';

export interface Host {
  readonly kind: 'actions' | 'cli';
  readonly inputs: InputSource;
  setOutput(name: string, value: string): void;
  saveState(name: string, value: string): void;
  /** What was saved under `name`: by this process if it saved it (main reads back its own state), else by main. */
  getState(name: string): string;
  /** Sets the variable for this process and for later steps of the job. */
  exportVariable(name: string, value: string): void;
  setSecret(value: string): void;
  debug(message: string): void;
  info(message: string): void;
  warning(message: string): void;
  error(message: string): void;
  group<T>(title: string, fn: () => Promise<T>): Promise<T>;
  appendSummary(markdown: string): Promise<void>;
}

const LINE_BREAK = /\r\n|\r|\n/;

/**
 * A line the runner could read as a command: `::name::` after anything it trims (it uses .NET TrimStart; every
 * separator, control, format or combining character is treated as trimmable here, a superset), or the legacy
 * `##[name]` anywhere in the line.
 */
const COMMAND_LIKE = /^[\p{Z}\p{C}\p{M}]*::|##\[/u;

/**
 * Text safe to print as log lines on a runner: returned as is unless one of its lines could be read as a
 * workflow command; then it is wrapped in `::stop-commands::<token>` … `::<token>::` (the runner's own way to
 * print untrusted text verbatim) with a fresh random token the text cannot know. The runner splits lines on
 * CR as well as LF, so both count as line breaks.
 */
export function withoutWorkflowCommands(text: string): string {
  if (!text.split(LINE_BREAK).some((line) => COMMAND_LIKE.test(line))) return text;
  let token: string;
  do token = randomBytes(16).toString('hex');
  while (text.includes(token));
  return `::stop-commands::${token}\n${text}\n::${token}::`;
}

/** How a write fails once its reader is gone: a pipe without a reader (EPIPE), a terminal that was closed (EIO). */
const READER_GONE: ReadonlySet<string | undefined> = new Set(['EPIPE', 'EIO']);
let outlivingReaders = false;

/**
 * Keeps the process going when whoever reads its stdout or stderr goes away: a `| head` that has its lines, a
 * `| tee` ended by the same Ctrl-C, a closed terminal. Node reports the failed write as an 'error' event, which
 * unhandled ends the process at once, in the middle of the cleanup that must still stop a service and delete
 * an ssh key. The lines nobody can read are dropped; any other write error stays fatal. Idempotent.
 */
export function outliveLostReaders(): void {
  if (outlivingReaders) return;
  outlivingReaders = true;
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (error: NodeJS.ErrnoException) => {
      if (!READER_GONE.has(error.code)) throw error;
    });
  }
}

export class ActionsHost implements Host {
  readonly kind = 'actions' as const;
  readonly inputs: InputSource = new EnvInputSource();
  /**
   * State this process saved. The runner hands saved state to post only (STATE_* variables), so without this
   * main could not read back what it saved earlier in the same main, which the CLI (one process) always can.
   */
  private readonly saved = new Map<string, string>();

  setOutput(name: string, value: string): void {
    core.setOutput(name, value);
  }
  saveState(name: string, value: string): void {
    core.saveState(name, value);
    this.saved.set(name, value);
  }
  getState(name: string): string {
    return this.saved.get(name) ?? core.getState(name);
  }
  exportVariable(name: string, value: string): void {
    core.exportVariable(name, value);
  }
  setSecret(value: string): void {
    registerSecret(value);
    for (const mask of maskValues(value)) core.setSecret(mask);
  }
  // debug, warning, error and group titles are command data, which @actions/core escapes (%, CR, LF): they
  // cannot end their line early. Only info writes raw text.
  debug(message: string): void {
    core.debug(message);
  }
  info(message: string): void {
    core.info(withoutWorkflowCommands(message));
  }
  warning(message: string): void {
    core.warning(message);
  }
  error(message: string): void {
    core.error(message);
  }
  group<T>(title: string, fn: () => Promise<T>): Promise<T> {
    return core.group(title, fn);
  }
  async appendSummary(markdown: string): Promise<void> {
    // Outside a runner (no GITHUB_STEP_SUMMARY) there is nowhere to write; the log already says what happened.
    if (!process.env.GITHUB_STEP_SUMMARY) return;
    await core.summary.addRaw(markdown, true).write();
  }
}

export interface CliHostOptions {
  inputs: InputSource;
  verbose?: boolean;
  /** Where log lines go; stderr so stdout carries only outputs. */
  log?: (line: string) => void;
  /** Where `name=value` output lines go. */
  out?: (line: string) => void;
}

/**
 * The CLI's host: state lives in memory (main and post run in one process), outputs are printed as
 * `name=value` lines on stdout, exported variables as `export NAME=value` hints, and registered secrets are
 * replaced by *** in every line printed. The CLI may itself run inside a workflow's `run:` step, where the
 * runner reads both streams for commands, so its lines are kept command-free too.
 */
export class CliHost implements Host {
  readonly kind = 'cli' as const;
  readonly inputs: InputSource;
  readonly outputs = new Map<string, string>();
  readonly exported = new Map<string, string>();
  private readonly state = new Map<string, string>();
  private readonly secrets = new Set<string>();
  private readonly summaries: string[] = [];
  private readonly verbose: boolean;
  private readonly log: (line: string) => void;
  private readonly out: (line: string) => void;

  constructor(options: CliHostOptions) {
    this.inputs = options.inputs;
    this.verbose = options.verbose ?? false;
    const log = options.log ?? ((line) => process.stderr.write(`${line}\n`));
    const out = options.out ?? ((line) => process.stdout.write(`${line}\n`));
    this.log = (line) => log(withoutWorkflowCommands(this.redact(line)));
    this.out = (line) => out(withoutWorkflowCommands(this.redact(line)));
  }

  private redact(text: string): string {
    return redact(text, this.secrets);
  }

  setOutput(name: string, value: string): void {
    this.outputs.set(name, value);
    this.out(`${name}=${value}`);
  }
  saveState(name: string, value: string): void {
    this.state.set(name, value);
  }
  getState(name: string): string {
    return this.state.get(name) ?? '';
  }
  exportVariable(name: string, value: string): void {
    process.env[name] = value;
    this.exported.set(name, value);
    this.log(`export ${name}=${shellQuote(value)}`);
  }
  setSecret(value: string): void {
    registerSecret(value);
    for (const mask of maskValues(value)) this.secrets.add(mask);
  }
  debug(message: string): void {
    if (this.verbose) this.log(`debug: ${message}`);
  }
  info(message: string): void {
    this.log(message);
  }
  warning(message: string): void {
    this.log(`warning: ${message}`);
  }
  error(message: string): void {
    this.log(`error: ${message}`);
  }
  async group<T>(title: string, fn: () => Promise<T>): Promise<T> {
    this.log(`== ${title}`);
    return fn();
  }
  async appendSummary(markdown: string): Promise<void> {
    this.summaries.push(markdown);
    this.log(markdown);
  }
}

function shellQuote(value: string): string {
  return /^[\w./:@%+=,-]*$/.test(value) ? value : `'${value.replace(/'/g, `'\\''`)}'`;
}
