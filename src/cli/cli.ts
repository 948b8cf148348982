/**
 * `image-ci <action> --<input> value ...`: the same readInputs/main/post as the action, with inputs from flags
 * and defaults from the action's action.yml. Exit codes: 0 ok, 1 failed, 2 bad input.
 */
import { parseArgs as parseArgv } from 'node:util';
import packageJson from '../../package.json' with { type: 'json' };
import { loadActionMetadata, type ActionMetadata } from '../core/action-metadata.js';
import { CliHost, outliveLostReaders, type Host } from '../core/host.js';
import { InputError, MapInputSource } from '../core/inputs.js';
import { interceptStdout, parseLibraryCommand } from '../core/library-output.js';
import { errorMessage, EXIT_BAD_INPUT, EXIT_OK, runMain, runPost } from '../core/run.js';
import { maskProxyCredentials } from '../core/proxy-env.js';
import { CLI_PASSWORD_ENV } from '../core/secrets.js';
import { ACTION_NAMES, actionNamed } from '../actions/registry.js';

/** From package.json as it was when the bundle was built: ncc inlines the import. */
export const VERSION: string = packageJson.version;

const PASSWORD_INPUT = 'password';
const PASSWORD_STDIN = 'password-stdin';

/** CLI-only options, not action inputs. */
const GLOBAL_FLAGS = {
  verbose: 'Print debug lines.',
  'cache-dir':
    'Use this directory as the cache backend (for CI systems without the Actions cache); sets IMAGE_CI_CACHE_DIR.',
  [PASSWORD_STDIN]: `Read the password from stdin (as docker login does), for actions with a password input; or set ${CLI_PASSWORD_ENV}. A --password on the command line is visible to every user of the machine.`,
} as const;

/** Global options given bare, like boolean inputs. */
const GLOBAL_SWITCHES: ReadonlySet<string> = new Set(['verbose', PASSWORD_STDIN]);

export interface CliIo {
  out: (line: string) => void;
  err: (line: string) => void;
  /** All of stdin (read only for --password-stdin); default: the process's stdin. */
  readStdin?: () => Promise<string>;
}

// Bound now: while an action runs, process.stdout.write is routed to the log (see routeLibraryStdout).
const writeStdout = process.stdout.write.bind(process.stdout);

async function readAllStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

const defaultIo: CliIo = {
  out: (line) => writeStdout(`${line}\n`),
  err: (line) => process.stderr.write(`${line}\n`),
};

function isBooleanInput(meta: ActionMetadata, name: string): boolean {
  const d = meta.inputs[name]?.default;
  return d === 'true' || d === 'false';
}

export interface ParsedArgs {
  values: Map<string, string>;
  globals: Map<string, string>;
  help: boolean;
}

/**
 * `--name value`, `--name=value`, bare `--flag` / `--no-flag` and `--flag=false` (as podman spells it) for
 * true/false inputs; repeats of a list input join as its lines. node:util.parseArgs splits the arguments; its
 * strict mode would report mistakes without naming the input, so they are judged here, on its tokens.
 */
export function parseArgs(meta: ActionMetadata, args: readonly string[]): ParsedArgs {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = {
    help: { type: 'boolean', short: 'h' },
  };
  for (const name of Object.keys(GLOBAL_FLAGS)) {
    options[name] = { type: GLOBAL_SWITCHES.has(name) ? 'boolean' : 'string' };
  }
  for (const name of Object.keys(meta.inputs)) {
    options[name] = { type: isBooleanInput(meta, name) ? 'boolean' : 'string' };
  }
  const { tokens } = parseArgv({
    args: [...args],
    options,
    strict: false,
    allowPositionals: true,
    allowNegative: true,
    tokens: true,
  });
  const namesOption = (arg: string) => {
    const flag = /^--(?:no-)?([^=]+)/.exec(arg)?.[1];
    return flag !== undefined && flag in options;
  };
  const values = new Map<string, string>();
  const globals = new Map<string, string>();
  let help = false;
  for (const [i, token] of tokens.entries()) {
    if (token.kind === 'option-terminator') continue;
    if (token.kind === 'positional') {
      const before = tokens[i - 1];
      const hint =
        before?.kind === 'option' && options[before.name]?.type === 'boolean' && before.value === undefined
          ? ` A true/false input takes its value after '=': --${before.name}=${token.value}.`
          : '';
      throw new InputError(token.value, `unexpected argument; inputs are given as --<input> <value>.${hint}`);
    }
    const { name, rawName } = token;
    const option = options[name];
    if (!option) {
      throw new InputError(
        rawName.replace(/^--?/, ''),
        `is not an input of ${meta.name || 'this action'}; see --help.`,
      );
    }
    if (name === 'help') {
      help = true;
      continue;
    }
    const negated = rawName === `--no-${name}`;
    let value: string;
    if (option.type === 'boolean') {
      if (negated && token.value !== undefined) {
        throw new InputError(name, `--no-${name} takes no value; give --${name}=<true|false>.`);
      }
      value = negated ? 'false' : (token.value ?? 'true');
    } else {
      if (negated) throw new InputError(name, `is not a true/false input; give --${name} <value>.`);
      // A value may start with dashes (an ssh key's armour); the next flag taken as one may not.
      if (token.value === undefined || (!token.inlineValue && namesOption(token.value))) {
        throw new InputError(name, `needs a value: --${name} <value>.`);
      }
      value = token.value;
    }
    const target = name in GLOBAL_FLAGS ? globals : values;
    const previous = target.get(name);
    target.set(name, previous === undefined || option.type === 'boolean' ? value : `${previous}\n${value}`);
  }
  return { values, globals, help };
}

/** Flags given, then action.yml defaults for the rest (the runner does the same for actions). */
export function withDefaults(meta: ActionMetadata, values: Map<string, string>): Map<string, string> {
  const merged = new Map(values);
  for (const [name, spec] of Object.entries(meta.inputs)) {
    if (!merged.has(name) && spec.default !== undefined) merged.set(name, spec.default);
  }
  return merged;
}

export function actionHelp(action: string, meta: ActionMetadata): string {
  const lines = [`image-ci ${action}: ${meta.description}`, '', 'Inputs:'];
  for (const [name, spec] of Object.entries(meta.inputs)) {
    const tags = [
      spec.required ? 'required' : '',
      spec.default !== undefined ? `default: ${spec.default}` : '',
    ]
      .filter(Boolean)
      .join(', ');
    lines.push(`  --${name}${tags ? ` (${tags})` : ''}`);
    lines.push(`      ${spec.description.replace(/\s+/g, ' ')}`);
  }
  lines.push('', 'Outputs (printed as name=value on stdout):');
  for (const [name, spec] of Object.entries(meta.outputs)) lines.push(`  ${name}: ${spec.description}`);
  lines.push('', 'Options:');
  for (const [name, text] of Object.entries(GLOBAL_FLAGS)) lines.push(`  --${name}: ${text}`);
  return lines.join('\n');
}

function generalHelp(): string {
  return [
    'usage: image-ci <action> [--<input> <value> ...]',
    '       image-ci <action> --help',
    '       image-ci --version',
    '',
    'Actions:',
    ...ACTION_NAMES.map((n) => `  ${n}`),
  ].join('\n');
}

export async function runCli(argv: readonly string[], io: CliIo = defaultIo): Promise<number> {
  outliveLostReaders();
  const [action, ...rest] = argv;
  if (!action || action === '--help' || action === '-h' || action === 'help') {
    io.out(generalHelp());
    return action ? EXIT_OK : EXIT_BAD_INPUT;
  }
  if (action === '--version' || action === '-V') {
    io.out(`image-ci ${VERSION}`);
    return EXIT_OK;
  }
  const definition = actionNamed(action);
  if (!definition) {
    io.err(`error: unknown action '${action}'.\n${generalHelp()}`);
    return EXIT_BAD_INPUT;
  }
  const meta = loadActionMetadata(action);
  let parsed: ParsedArgs;
  try {
    parsed = parseArgs(meta, rest);
  } catch (error) {
    io.err(`error: ${errorMessage(error)}`);
    return EXIT_BAD_INPUT;
  }
  if (parsed.help) {
    io.out(actionHelp(action, meta));
    return EXIT_OK;
  }
  const cacheDir = parsed.globals.get('cache-dir');
  if (cacheDir) process.env.IMAGE_CI_CACHE_DIR = cacheDir;
  let password: Password | undefined;
  try {
    password = await readPassword(meta, parsed, io);
  } catch (error) {
    io.err(`error: ${errorMessage(error)}`);
    return EXIT_BAD_INPUT;
  }
  const values = new Map(parsed.values);
  if (password) values.set(PASSWORD_INPUT, password.value);
  const host = new CliHost({
    inputs: new MapInputSource(withDefaults(meta, values)),
    verbose: parsed.globals.get('verbose') === 'true',
    log: io.err,
    out: io.out,
  });
  if (password) host.setSecret(password.value);
  maskProxyCredentials(host);
  if (password?.from === 'argv') {
    host.warning(
      `--${PASSWORD_INPUT} on the command line is visible to other users (ps) and in shell history; ` +
        `use --${PASSWORD_STDIN} or ${CLI_PASSWORD_ENV}.`,
    );
  }
  const unroute = routeLibraryStdout(host);
  try {
    const code = await runMain(definition, host);
    await runPost(definition, host);
    return code;
  } finally {
    unroute();
  }
}

interface Password {
  value: string;
  from: 'argv' | 'stdin' | 'env';
}

/** The password from exactly one place: --password-stdin, --password (warned about), or IMAGE_CI_PASSWORD. */
export async function readPassword(
  meta: ActionMetadata,
  parsed: ParsedArgs,
  io: CliIo,
): Promise<Password | undefined> {
  const hasInput = PASSWORD_INPUT in meta.inputs;
  const argv = parsed.values.get(PASSWORD_INPUT);
  if (parsed.globals.get(PASSWORD_STDIN) === 'true') {
    if (!hasInput) throw new InputError(PASSWORD_STDIN, `${meta.name || 'this action'} takes no password.`);
    if (argv !== undefined) {
      throw new InputError(PASSWORD_STDIN, `cannot be combined with --${PASSWORD_INPUT}; give one of them.`);
    }
    // docker login --password-stdin: everything on stdin, without the final line break.
    const value = (await (io.readStdin ?? readAllStdin)()).replace(/\n$/, '').replace(/\r$/, '');
    if (!value) throw new InputError(PASSWORD_STDIN, 'stdin held no password.');
    return { value, from: 'stdin' };
  }
  if (argv !== undefined) return { value: argv, from: 'argv' };
  const env = process.env[CLI_PASSWORD_ENV];
  return hasInput && env ? { value: env, from: 'env' } : undefined;
}

/**
 * Libraries log through @actions/core, which writes workflow commands straight to process.stdout
 * (@actions/cache calls core.debug on every download). The CLI promises that
 * stdout holds only `name=value` outputs, so while an action runs whatever else is written there is read as
 * those commands and logged through the host instead. Returns the function that undoes it.
 */
function routeLibraryStdout(host: Host): () => void {
  return interceptStdout((line) => {
    const command = parseLibraryCommand(line);
    if (!command) {
      if (line) host.info(line);
      return;
    }
    switch (command.name) {
      case 'debug':
        return host.debug(command.data);
      case 'add-mask':
        return host.setSecret(command.data);
      case 'warning':
        return host.warning(command.data);
      case 'error':
        return host.error(command.data);
      case 'endgroup':
        return;
      default:
        return host.info(command.data);
    }
  });
}
