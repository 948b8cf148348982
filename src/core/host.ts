/**
 * What an action may do to the world around it. The Actions runner and the CLI each provide one, so action code
 * never calls @actions/core directly and behaves the same in both.
 */
import * as core from '@actions/core';
import { EnvInputSource, type InputSource } from './inputs.js';

export interface Host {
  readonly kind: 'actions' | 'cli';
  readonly inputs: InputSource;
  setOutput(name: string, value: string): void;
  saveState(name: string, value: string): void;
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

export class ActionsHost implements Host {
  readonly kind = 'actions' as const;
  readonly inputs: InputSource = new EnvInputSource();

  setOutput(name: string, value: string): void {
    core.setOutput(name, value);
  }
  saveState(name: string, value: string): void {
    core.saveState(name, value);
  }
  getState(name: string): string {
    return core.getState(name);
  }
  exportVariable(name: string, value: string): void {
    core.exportVariable(name, value);
  }
  setSecret(value: string): void {
    if (value) core.setSecret(value);
  }
  debug(message: string): void {
    core.debug(message);
  }
  info(message: string): void {
    core.info(message);
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
 * replaced by *** in every line printed.
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
    this.log = options.log ?? ((line) => process.stderr.write(`${line}\n`));
    this.out = options.out ?? ((line) => process.stdout.write(`${line}\n`));
  }

  private redact(text: string): string {
    let result = text;
    for (const s of this.secrets) result = result.split(s).join('***');
    return result;
  }

  setOutput(name: string, value: string): void {
    this.outputs.set(name, value);
    this.out(this.redact(`${name}=${value}`));
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
    this.log(this.redact(`export ${name}=${shellQuote(value)}`));
  }
  setSecret(value: string): void {
    if (value) this.secrets.add(value);
  }
  debug(message: string): void {
    if (this.verbose) this.log(this.redact(`debug: ${message}`));
  }
  info(message: string): void {
    this.log(this.redact(message));
  }
  warning(message: string): void {
    this.log(this.redact(`warning: ${message}`));
  }
  error(message: string): void {
    this.log(this.redact(`error: ${message}`));
  }
  async group<T>(title: string, fn: () => Promise<T>): Promise<T> {
    this.log(this.redact(`== ${title}`));
    return fn();
  }
  async appendSummary(markdown: string): Promise<void> {
    this.summaries.push(markdown);
    this.log(this.redact(markdown));
  }
}

function shellQuote(value: string): string {
  return /^[\w./:@%+=,-]*$/.test(value) ? value : `'${value.replace(/'/g, `'\\''`)}'`;
}
