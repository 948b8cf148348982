/**
 * Runs an action's main and post the way the GitHub runner does: a child `node` process per step, INPUT_*
 * variables with action.yml defaults applied, file commands (GITHUB_OUTPUT/STATE/ENV/PATH/STEP_SUMMARY) parsed
 * afterwards, STATE_* handed to post, exported env carried into post, and workflow commands read off stdout.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { removeAfterFile } from './run-dir.js';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

export interface LogLine {
  stream: 'stdout' | 'stderr';
  text: string;
}

export interface StepResult {
  exitCode: number;
  /** Raw output lines in order (both streams, as they arrived). */
  lines: LogLine[];
  outputs: Record<string, string>;
  state: Record<string, string>;
  /** Every state save in order (a name saved again appears again), for crash points at a chosen save. */
  stateSaves: Array<[string, string]>;
  exportedEnv: Record<string, string>;
  addedPaths: string[];
  summary: string;
  masks: string[];
  errors: string[];
  warnings: string[];
  notices: string[];
  durationMs: number;
}

export interface RunResult {
  main: StepResult;
  post?: StepResult;
  /** main's outputs (post cannot set outputs a later step sees). */
  outputs: Record<string, string>;
  /** Env exported by main and post, as later steps of the job would see it. */
  exportedEnv: Record<string, string>;
  masks: string[];
  errors: string[];
  warnings: string[];
  /** All log text of both steps joined, for "the secret never appears" checks. */
  log: string;
  /** The RUNNER_TEMP both steps saw, and what it held before main started. */
  runnerTemp: string;
  runnerTempBefore: string[];
}

export interface RunOptions {
  /** An action under actions/<name>: runs dist/<name>/main.js and post.js with defaults from its action.yml. */
  action?: string;
  /** Or explicit step scripts and action.yml (fixtures). */
  mainScript?: string;
  postScript?: string;
  actionYml?: string;
  inputs?: Record<string, string>;
  /** Extra env for both steps (cache service env, CONTAINERS_CONF, ...); undefined removes a variable. */
  env?: Record<string, string | undefined>;
  /** RUNNER_TEMP; stable across "runs" when a test simulates a later job (see facts.md). Default: a new dir. */
  runnerTemp?: string;
  home?: string;
  workspace?: string;
  skipPost?: boolean;
  /** Kill a step after this long (default 5 minutes). */
  timeoutMs?: number;
  /**
   * The leftovers rule, checked after every post: RUNNER_TEMP holds nothing new except these cache paths (see
   * runnerTempLeftovers). `unchecked` only for tests of the harness itself or of what a killed step leaves.
   */
  keepInRunnerTemp?: readonly string[] | 'unchecked';
}

const SCRUBBED_PREFIXES = ['INPUT_', 'STATE_', 'GITHUB_', 'ACTIONS_', 'RUNNER_'];

function baseEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined || SCRUBBED_PREFIXES.some((p) => k.startsWith(p))) continue;
    env[k] = v;
  }
  // Jest sets these for its own workers; an action must not see them.
  delete env.NODE_OPTIONS;
  delete env.JEST_WORKER_ID;
  return env;
}

/** The runner's INPUT_ naming: spaces to underscores, upper-case, dashes kept. */
export function inputEnvName(name: string): string {
  return `INPUT_${name.replace(/ /g, '_').toUpperCase()}`;
}

function readDefaults(actionYml: string): Record<string, string> {
  const doc = parse(readFileSync(actionYml, 'utf8')) as { inputs?: Record<string, { default?: unknown }> };
  const defaults: Record<string, string> = {};
  for (const [name, spec] of Object.entries(doc.inputs ?? {})) {
    if (spec.default !== undefined) defaults[name] = String(spec.default);
  }
  return defaults;
}

/** Parses a file-command file: `name=value` lines and `name<<DELIM` heredocs. */
export function parseFileCommands(text: string): Array<[string, string]> {
  const result: Array<[string, string]> = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (!line) continue;
    const heredoc = /^([^=<]+)<<(.+)$/.exec(line);
    if (heredoc) {
      const [, name, delimiter] = heredoc;
      const value: string[] = [];
      i++;
      while (i < lines.length && lines[i] !== delimiter) value.push(lines[i++]!);
      if (i >= lines.length) throw new Error(`unterminated heredoc for ${name} in file command`);
      result.push([name!, value.join('\n')]);
      continue;
    }
    const eq = line.indexOf('=');
    if (eq <= 0) throw new Error(`malformed file command line: ${line}`);
    result.push([line.slice(0, eq), line.slice(eq + 1)]);
  }
  return result;
}

function unescapeData(s: string): string {
  return s.replace(/%0D/g, '\r').replace(/%0A/g, '\n').replace(/%25/g, '%');
}

export interface WorkflowCommand {
  /** Lower-cased command name; a line that resumes after `stop-commands` is named `resume-commands`. */
  name: string;
  data: string;
  text: string;
  stream: LogLine['stream'];
}

/**
 * The runner's two parsers (actions/runner ActionCommand.TryParseV2, then TryParse): `::name props::data` after
 * leading whitespace (.NET TrimStart, which also trims U+0085), and the legacy `##[name props]data` anywhere in
 * the line. Returns the raw name and data, or undefined when the line is no command.
 */
function parseCommandLine(line: string): { name: string; data: string } | undefined {
  const trimmed = line.replace(/^[\s\u0085]+/, '');
  if (trimmed.startsWith('::')) {
    const end = trimmed.indexOf('::', 2);
    if (end >= 0) {
      return { name: trimmed.slice(2, end).split(' ')[0]!, data: trimmed.slice(end + 2) };
    }
  }
  const prefix = line.indexOf('##[');
  if (prefix < 0) return undefined;
  const end = line.indexOf(']', prefix);
  if (end < 0) return undefined;
  return { name: line.slice(prefix + 3, end).split(' ')[0]!, data: line.slice(end + 1) };
}

/**
 * Every line the runner would act on as a workflow command, in order, modelled on actions/runner's
 * ActionCommandManager: both streams are read, the v2 form first then the legacy `##[...]` form, names are
 * case-insensitive, and between `::stop-commands::<token>` and a line naming `<token>` nothing else counts.
 * Any command name counts (a superset of the registered ones), so a test sees every line that could act.
 */
export function workflowCommands(lines: readonly LogLine[]): WorkflowCommand[] {
  const commands: WorkflowCommand[] = [];
  let stopToken: string | undefined;
  for (const { stream, text } of lines) {
    for (const line of text.split(/\r/)) {
      const parsed = parseCommandLine(line);
      if (!parsed?.name) continue;
      const name = parsed.name.toLowerCase();
      if (stopToken !== undefined) {
        if (name === stopToken) {
          commands.push({ name: 'resume-commands', data: '', text: line, stream });
          stopToken = undefined;
        }
        continue;
      }
      const data = unescapeData(parsed.data);
      if (name === 'stop-commands') stopToken = data.toLowerCase();
      commands.push({ name, data, text: line, stream });
    }
  }
  return commands;
}

/** What the actions of this project write themselves (through @actions/core and the Host). */
export const ACTION_COMMANDS: ReadonlySet<string> = new Set([
  'add-mask',
  'debug',
  'notice',
  'warning',
  'error',
  'group',
  'endgroup',
  'stop-commands',
  'resume-commands',
]);

/** Commands in a step's output that are not on the allow-list: a non-empty result means injected text. */
export function foreignCommands(
  step: Pick<StepResult, 'lines'>,
  allowed: ReadonlySet<string> = ACTION_COMMANDS,
): WorkflowCommand[] {
  return workflowCommands(step.lines).filter((c) => !allowed.has(c.name));
}

interface Commands {
  masks: string[];
  errors: string[];
  warnings: string[];
  notices: string[];
}

function parseWorkflowCommands(lines: LogLine[]): Commands {
  const c: Commands = { masks: [], errors: [], warnings: [], notices: [] };
  for (const { name, data } of workflowCommands(lines)) {
    if (name === 'add-mask') c.masks.push(data);
    else if (name === 'error') c.errors.push(data);
    else if (name === 'warning') c.warnings.push(data);
    else if (name === 'notice') c.notices.push(data);
  }
  return c;
}

function readFileOrEmpty(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

async function runStep(
  script: string,
  env: Record<string, string>,
  stepDir: string,
  cwd: string,
  timeoutMs: number,
): Promise<StepResult> {
  mkdirSync(stepDir, { recursive: true });
  const files = {
    GITHUB_OUTPUT: join(stepDir, 'output'),
    GITHUB_STATE: join(stepDir, 'state'),
    GITHUB_ENV: join(stepDir, 'env'),
    GITHUB_PATH: join(stepDir, 'path'),
    GITHUB_STEP_SUMMARY: join(stepDir, 'summary'),
  };
  for (const f of Object.values(files)) writeFileSync(f, '');
  const started = Date.now();
  const lines: LogLine[] = [];
  const exitCode = await new Promise<number>((resolvePromise, reject) => {
    const child = spawn(process.execPath, [script], {
      cwd,
      env: { ...env, ...files },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    for (const stream of ['stdout', 'stderr'] as const) {
      let pending = '';
      child[stream].on('data', (chunk: Buffer) => {
        pending += chunk.toString('utf8');
        const parts = pending.split('\n');
        pending = parts.pop() ?? '';
        for (const text of parts) lines.push({ stream, text });
      });
      child[stream].on('end', () => {
        if (pending) lines.push({ stream, text: pending });
      });
    }
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolvePromise(code ?? (signal ? 137 : 1));
    });
  });
  const commands = parseWorkflowCommands(lines);
  const stateSaves = parseFileCommands(readFileOrEmpty(files.GITHUB_STATE));
  return {
    exitCode,
    lines,
    outputs: Object.fromEntries(parseFileCommands(readFileOrEmpty(files.GITHUB_OUTPUT))),
    state: Object.fromEntries(stateSaves),
    stateSaves,
    exportedEnv: Object.fromEntries(parseFileCommands(readFileOrEmpty(files.GITHUB_ENV))),
    addedPaths: readFileOrEmpty(files.GITHUB_PATH).split('\n').filter(Boolean),
    summary: readFileOrEmpty(files.GITHUB_STEP_SUMMARY),
    ...commands,
    durationMs: Date.now() - started,
  };
}

/** Runs main, then post (the runner runs post with `post-if: always()` even when main failed). */
export async function runAction(options: RunOptions): Promise<RunResult> {
  const mainScript =
    options.mainScript ?? (options.action ? join(REPO_ROOT, 'dist', options.action, 'main.js') : undefined);
  const postScript =
    options.postScript ?? (options.action ? join(REPO_ROOT, 'dist', options.action, 'post.js') : undefined);
  const actionYml =
    options.actionYml ??
    (options.action ? join(REPO_ROOT, 'actions', options.action, 'action.yml') : undefined);
  if (!mainScript) throw new Error('runAction needs `action` or `mainScript`');

  const runDir = mkdtempSync(join(tmpdir(), 'ici-run-'));
  removeAfterFile(runDir);
  const runnerTemp = options.runnerTemp ?? join(runDir, 'runner-temp');
  const workspace = options.workspace ?? join(runDir, 'workspace');
  const toolCache = join(runDir, 'tool-cache');
  for (const d of [runnerTemp, workspace, toolCache]) mkdirSync(d, { recursive: true });

  const runnerTempBefore = readdirSync(runnerTemp);
  const inputs = { ...(actionYml ? readDefaults(actionYml) : {}), ...(options.inputs ?? {}) };
  const env: Record<string, string> = {
    ...baseEnv(),
    GITHUB_ACTIONS: 'true',
    CI: 'true',
    RUNNER_TEMP: runnerTemp,
    RUNNER_TOOL_CACHE: toolCache,
    RUNNER_OS: 'Linux',
    RUNNER_ARCH: process.arch === 'arm64' ? 'ARM64' : 'X64',
    GITHUB_WORKSPACE: workspace,
    GITHUB_REPOSITORY: 'example/image-ci-test',
    GITHUB_RUN_ID: '1',
    GITHUB_JOB: 'test',
  };
  if (options.home) env.HOME = options.home;
  for (const [k, v] of Object.entries(options.env ?? {})) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  for (const [name, value] of Object.entries(inputs)) env[inputEnvName(name)] = value;

  const timeoutMs = options.timeoutMs ?? 300_000;
  const main = await runStep(mainScript, env, join(runDir, 'main'), workspace, timeoutMs);
  let post: StepResult | undefined;
  if (postScript && !options.skipPost) {
    const postEnv = { ...env, ...main.exportedEnv };
    for (const [k, v] of Object.entries(main.state)) postEnv[`STATE_${k}`] = v;
    post = await runStep(postScript, postEnv, join(runDir, 'post'), workspace, timeoutMs);
  }
  const steps = post ? [main, post] : [main];
  const result: RunResult = {
    main,
    post,
    outputs: main.outputs,
    exportedEnv: { ...main.exportedEnv, ...(post?.exportedEnv ?? {}) },
    masks: steps.flatMap((s) => s.masks),
    errors: steps.flatMap((s) => s.errors),
    warnings: steps.flatMap((s) => s.warnings),
    log: steps.flatMap((s) => s.lines.map((l) => l.text)).join('\n'),
    runnerTemp,
    runnerTempBefore,
  };
  const keep = options.keepInRunnerTemp ?? [];
  if (post && keep !== 'unchecked') {
    const left = runnerTempLeftovers(result, keep);
    if (left.length > 0) {
      throw new Error(
        `leftovers rule: main and post left ${left.join(', ')} in RUNNER_TEMP ${runnerTemp}\n${result.log}`,
      );
    }
  }
  return result;
}

/**
 * What the action left in RUNNER_TEMP after main and post: every entry that was not there before main, except
 * the declared cache paths (stable `ici-<name>` dirs, given by name or as paths inside RUNNER_TEMP), which
 * must stay because a later run's cache save or restore uses the very same path. Expect it to be [].
 */
export function runnerTempLeftovers(result: RunResult, cachePaths: readonly string[] = []): string[] {
  const kept = new Set(
    cachePaths.map((p) => (isAbsolute(p) ? relative(result.runnerTemp, p).split(sep)[0]! : p)),
  );
  return readdirSync(result.runnerTemp)
    .sort()
    .filter((entry) => !result.runnerTempBefore.includes(entry) && !kept.has(entry));
}

/**
 * True when every line showing `secret` comes after an `::add-mask::` of it: the runner would have masked
 * it. (The add-mask line itself necessarily carries the secret.)
 */
export function secretOnlyAfterMask(step: StepResult, secret: string): boolean {
  let masked = false;
  for (const { stream, text } of step.lines) {
    if (stream === 'stdout' && text === `::add-mask::${secret}`) {
      masked = true;
      continue;
    }
    if (text.includes(secret) && !masked) return false;
  }
  return true;
}
