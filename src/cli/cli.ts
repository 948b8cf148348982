/**
 * `image-ci <action> --<input> value ...`: the same readInputs/main/post as the action, with inputs from flags
 * and defaults from the action's action.yml. Exit codes: 0 ok, 1 failed, 2 bad input.
 */
import { loadActionMetadata, type ActionMetadata } from '../core/action-metadata.js';
import { CliHost } from '../core/host.js';
import { InputError, MapInputSource } from '../core/inputs.js';
import { EXIT_BAD_INPUT, EXIT_OK, runMain, runPost } from '../core/run.js';
import { ACTIONS, ACTION_NAMES } from '../actions/registry.js';

/** CLI-only options, not action inputs. */
const GLOBAL_FLAGS = {
  verbose: 'Print debug lines.',
  'cache-dir':
    'Use this directory as the cache backend (for CI systems without the Actions cache); sets IMAGE_CI_CACHE_DIR.',
} as const;

export interface CliIo {
  out: (line: string) => void;
  err: (line: string) => void;
}

const defaultIo: CliIo = {
  out: (line) => process.stdout.write(`${line}\n`),
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

/** Parses `--name value`, `--name=value`, bare `--flag` / `--no-flag` for boolean inputs; repeats join as a list. */
export function parseArgs(meta: ActionMetadata, args: readonly string[]): ParsedArgs {
  const values = new Map<string, string>();
  const globals = new Map<string, string>();
  let help = false;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--help' || arg === '-h') {
      help = true;
      continue;
    }
    if (!arg.startsWith('--')) {
      throw new InputError(arg, `unexpected argument; inputs are given as --<input> <value>.`);
    }
    const eq = arg.indexOf('=');
    let name = eq > 0 ? arg.slice(2, eq) : arg.slice(2);
    let value: string | undefined = eq > 0 ? arg.slice(eq + 1) : undefined;
    if (value === undefined && name.startsWith('no-') && isBooleanInput(meta, name.slice(3))) {
      name = name.slice(3);
      value = 'false';
    }
    const isGlobal = name in GLOBAL_FLAGS;
    if (!isGlobal && !(name in meta.inputs)) {
      throw new InputError(name, `is not an input of ${meta.name || 'this action'}; see --help.`);
    }
    if (value === undefined) {
      const next = args[i + 1];
      const flagLike = (isGlobal && name === 'verbose') || isBooleanInput(meta, name);
      if (flagLike && (next === undefined || next.startsWith('--'))) {
        value = 'true';
      } else if (next === undefined) {
        throw new InputError(name, 'needs a value: --' + name + ' <value>.');
      } else {
        value = next;
        i++;
      }
    }
    const target = isGlobal ? globals : values;
    const previous = target.get(name);
    target.set(name, previous === undefined ? value : `${previous}\n${value}`);
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
    '',
    'Actions:',
    ...ACTION_NAMES.map((n) => `  ${n}`),
  ].join('\n');
}

export async function runCli(argv: readonly string[], io: CliIo = defaultIo): Promise<number> {
  const [action, ...rest] = argv;
  if (!action || action === '--help' || action === '-h' || action === 'help') {
    io.out(generalHelp());
    return action ? EXIT_OK : EXIT_BAD_INPUT;
  }
  const definition = ACTIONS[action];
  if (!definition) {
    io.err(`error: unknown action '${action}'.\n${generalHelp()}`);
    return EXIT_BAD_INPUT;
  }
  const meta = loadActionMetadata(action);
  let parsed: ParsedArgs;
  try {
    parsed = parseArgs(meta, rest);
  } catch (error) {
    io.err(`error: ${(error as Error).message}`);
    return EXIT_BAD_INPUT;
  }
  if (parsed.help) {
    io.out(actionHelp(action, meta));
    return EXIT_OK;
  }
  const cacheDir = parsed.globals.get('cache-dir');
  if (cacheDir) process.env.IMAGE_CI_CACHE_DIR = cacheDir;
  const host = new CliHost({
    inputs: new MapInputSource(withDefaults(meta, parsed.values)),
    verbose: parsed.globals.get('verbose') === 'true',
    log: io.err,
    out: io.out,
  });
  const code = await runMain(definition, host);
  await runPost(definition, host);
  return code;
}
