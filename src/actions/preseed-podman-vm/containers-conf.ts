/**
 * The containers.conf that makes every later `podman machine init` use the local image, whatever HOME it runs
 * with. Podman >= 4.4 reads CONTAINERS_CONF_OVERRIDE on top of its normal files, so a two-line file is enough.
 * Older podman only has CONTAINERS_CONF, which REPLACES every other containers.conf: that file must carry the
 * settings the user already had, so the base conf is copied with only `[machine] image` changed. The same holds
 * for an override file already set: there is only one.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { readRegularFile } from '../../core/files.js';
import { InputError } from '../../core/inputs.js';
import { CONTAINERS_CONF, CONTAINERS_CONF_OVERRIDE, type ContainersConfVariable } from '../../core/podman.js';
import { ActionError, errorMessage } from '../../core/run.js';

/** A containers.conf is a few KB; a larger file is no containers.conf. */
const CONF_LIMIT = 1024 * 1024;

/** TOML's short escapes; every other control character is written as `\uXXXX`. */
const TOML_ESCAPES: Record<string, string> = {
  '\b': '\\b',
  '\t': '\\t',
  '\n': '\\n',
  '\f': '\\f',
  '\r': '\\r',
};

/**
 * A TOML basic string. A file name may hold any character but `/` and NUL, and TOML refuses a literal control
 * character (U+0000-U+001F but tab, U+007F) in a string: left in, podman would fail on the whole file. (C1
 * controls, which TOML allows, are escaped too: the same string, and no terminal acts on them in a `cat`.)
 */
export function tomlString(value: string): string {
  const escaped = value.replace(/[\\"\p{Cc}]/gu, (c) =>
    c === '\\' || c === '"'
      ? `\\${c}`
      : (TOML_ESCAPES[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, '0').toUpperCase()}`),
  );
  return `"${escaped}"`;
}

const TABLE_HEADER = /^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$/;
/** `image`, bare or quoted: TOML reads `"image" = ...` as the same key, and a second one is an error. */
const IMAGE_KEY = /^\s*(?:image|"image"|'image')\s*=/;

/** `machine.image` as a dotted key of the top-level table, bare or quoted parts. */
const DOTTED_IMAGE_KEY = /^\s*(?:machine|"machine"|'machine')\s*\.\s*(?:image|"image"|'image')\s*=/;
/** Any `machine.<key>` dotted key of the top-level table: the [machine] table is defined by dotted keys. */
const DOTTED_MACHINE_KEY = /^\s*(?:machine|"machine"|'machine')\s*\./;
/** `machine = { ... }`: the [machine] table as an inline table, closed to any other key. */
const INLINE_MACHINE = /^\s*(?:machine|"machine"|'machine')\s*=\s*\{/;

/** A table name as TOML reads it: `["machine"]` and `['machine']` are `[machine]`. */
function tableName(raw: string): string {
  return raw.replace(/^(["'])([^"']*)\1$/, '$2');
}

/** The multi-line string open at the end of a line, if any. */
type OpenString = '' | '"""' | "'''";

/**
 * Follows TOML's strings through one line: lines inside a multi-line string are text, not tables or keys (a
 * `[machine]` line in a multi-line value is no table, and `image = ...` there no setting).
 */
function openStringAfter(line: string, open: OpenString): OpenString {
  let i = 0;
  while (i < line.length) {
    if (open) {
      if (open === '"""' && line[i] === '\\') {
        i += 2;
      } else if (line.startsWith(open, i)) {
        // Up to two quotes right before the closing delimiter belong to the string.
        let run = 0;
        while (run < 5 && line[i + run] === open[0]) run++;
        i += run;
        open = '';
      } else {
        i++;
      }
      continue;
    }
    const c = line[i];
    if (c === '#') break;
    if (line.startsWith('"""', i) || line.startsWith("'''", i)) {
      open = line.slice(i, i + 3) as OpenString;
      i += 3;
    } else if (c === '"') {
      i++;
      while (i < line.length && line[i] !== '"') i += line[i] === '\\' ? 2 : 1;
      i++;
    } else if (c === "'") {
      const end = line.indexOf("'", i + 1);
      i = end < 0 ? line.length : end + 1;
    } else {
      i++;
    }
  }
  return open;
}

/** The index after the string that starts at `i`: basic or literal, one-line or multi-line. */
function afterString(text: string, i: number): number {
  const quote = text[i]!;
  const delimiter = text.startsWith(quote.repeat(3), i) ? quote.repeat(3) : quote;
  i += delimiter.length;
  while (i < text.length && !text.startsWith(delimiter, i)) i += quote === '"' && text[i] === '\\' ? 2 : 1;
  let end = i + delimiter.length;
  // Up to two quotes right before a multi-line string's closing delimiter belong to the string.
  if (delimiter.length === 3) while (end < i + 5 && text[end] === quote) end++;
  return end;
}

/**
 * Sets `image` in an inline table `machine = { ... }` at the start of `lines`: its value replaced, or the key added
 * before the closing brace. Entries are split at the commas outside strings and nested values. TOML 1.0 lets a
 * value inside it span lines (an array, a multi-line string), which podman 4 and 5 read; a line break between its
 * entries is TOML 1.1, which they refuse. Returns the edited lines and how many of `lines` the table took.
 */
function setInlineImage(lines: string[], value: string): { edited: string[]; taken: number } {
  const text = lines.join('\n');
  const open = text.indexOf('{');
  // Brackets open around `i`: '{' is the inline table itself (and nested ones), '[' an array.
  const nesting: string[] = [];
  let entryStart = open + 1;
  let image: { start: number; key: string; end: number } | undefined;
  for (let i = open; i < text.length; i++) {
    const c = text[i]!;
    if (c === '"' || c === "'") {
      i = afterString(text, i) - 1;
    } else if (c === '#' || c === '\n') {
      // A comment or line break is allowed inside an array only; elsewhere the table is not TOML 1.0.
      if (nesting[nesting.length - 1] !== '[') break;
      if (c === '#') i = (text.indexOf('\n', i) + 1 || text.length) - 1;
    } else if (c === '{' || c === '[') {
      nesting.push(c);
    } else if ((c === ',' || c === '}') && nesting.length === 1) {
      const entry = text.slice(entryStart, i);
      const key = /^\s*(?:image|"image"|'image')\s*=\s*/.exec(entry);
      // The value ends before the entry's trailing blanks, which stay.
      if (key) image = { start: entryStart, key: key[0], end: entryStart + entry.trimEnd().length };
      if (c === '}') return inlineEdit(text, i, image, value);
      entryStart = i + 1;
    } else if (c === ']' || c === '}') {
      nesting.pop();
    }
  }
  throw new ActionError(
    'it sets `machine = { ... }` as an inline table with a line break between its entries (TOML 1.1, which podman refuses too); write it as a [machine] table so the action can set `image` in it.',
  );
}

/** The lines of `text` up to the one holding the inline table's closing brace at `close`, with `image` set. */
function inlineEdit(
  text: string,
  close: number,
  image: { start: number; key: string; end: number } | undefined,
  value: string,
): { edited: string[]; taken: number } {
  let edited: string;
  if (image) {
    edited = `${text.slice(0, image.start)}${image.key}${value}${text.slice(image.end)}`;
  } else {
    const before = text.slice(0, close).trimEnd();
    edited = `${before}${before.endsWith('{') ? ' ' : ', '}image = ${value} ${text.slice(close)}`;
  }
  // The edit is before the closing brace: what follows its line is unchanged, shifted by the edit's length.
  const lineEnd = text.indexOf('\n', close) < 0 ? text.length : text.indexOf('\n', close);
  const own = edited.slice(0, lineEnd + edited.length - text.length);
  return { edited: own.split('\n'), taken: text.slice(0, close).split('\n').length };
}

/**
 * Sets `image` in the `[machine]` table of a containers.conf text, keeping everything else as written.
 * (A line-based edit instead of a TOML round trip: comments and formatting of the user's file survive.)
 */
export function setMachineImage(conf: string, imagePath: string): string {
  const line = `image = ${tomlString(imagePath)}`;
  // Podman 5 skips a BOM; podman 4's TOML parser stops at it ("expected '.' or '=', but got '\ufeff'").
  const text = conf.replace(/^\uFEFF/, '');
  const lines = text === '' ? [] : text.replace(/\n$/, '').split('\n');
  let inMachine = false;
  let topLevel = true;
  let machineHeader = -1;
  let dottedMachine = false;
  let replaced = false;
  let open: OpenString = '';
  for (let i = 0; i < lines.length; i++) {
    const inString = open !== '';
    open = openStringAfter(lines[i]!, open);
    if (inString) continue;
    const header = TABLE_HEADER.exec(lines[i]!);
    if (header) {
      inMachine = tableName(header[1]!) === 'machine';
      topLevel = false;
      if (inMachine) machineHeader = i;
      continue;
    }
    // The top-level table may define [machine] by dotted keys or as an inline table: a [machine] table added
    // after them would define it twice, and podman 4 and 5 then fail on every command.
    if (topLevel && INLINE_MACHINE.test(lines[i]!)) {
      const { edited, taken } = setInlineImage(lines.slice(i), tomlString(imagePath));
      lines.splice(i, taken, ...edited);
      i += edited.length - 1;
      // The table closed every string it opened.
      open = '';
      replaced = true;
      continue;
    }
    if (topLevel && DOTTED_MACHINE_KEY.test(lines[i]!)) dottedMachine = true;
    const dottedImage = topLevel && DOTTED_IMAGE_KEY.test(lines[i]!);
    if (dottedImage || (inMachine && IMAGE_KEY.test(lines[i]!))) {
      lines[i] = dottedImage ? `machine.${line}` : line;
      replaced = true;
      // The old value was a multi-line string: its other lines go with it.
      while (open && i + 1 < lines.length) {
        open = openStringAfter(lines[i + 1]!, open);
        lines.splice(i + 1, 1);
      }
    }
  }
  if (!replaced) {
    if (machineHeader >= 0) lines.splice(machineHeader + 1, 0, line);
    // The first line is always in the top-level table, where the other dotted keys are.
    else if (dottedMachine) lines.unshift(`machine.${line}`);
    else lines.push(...(lines.length ? [''] : []), '[machine]', line);
  }
  return `${lines.join('\n')}\n`;
}

/**
 * The file CONTAINERS_CONF would replace: an earlier CONTAINERS_CONF if one is set, else the user's
 * containers.conf, else the system one. Podman normally layers user over system; with one file we keep the
 * most specific one, which is what the user edited.
 */
export function baseConfCandidates(env: NodeJS.ProcessEnv = process.env): string[] {
  const home = env.HOME ?? '';
  const configHome = env.XDG_CONFIG_HOME || join(home, '.config');
  return [
    ...(env[CONTAINERS_CONF] ? [env[CONTAINERS_CONF]] : []),
    join(configHome, 'containers', 'containers.conf'),
    '/etc/containers/containers.conf',
    '/usr/share/containers/containers.conf',
  ];
}

export interface ConfPlan {
  /** The variable to export: CONTAINERS_CONF_OVERRIDE or CONTAINERS_CONF. */
  variable: ContainersConfVariable;
  text: string;
  /** The file whose settings were carried over. */
  base?: string;
  /** CONTAINERS_CONF only: drop-in files podman reads now and will no longer read (not carried over). */
  dropped?: string[];
}

/**
 * The drop-in files podman < 4.4 reads when CONTAINERS_CONF is not set (containers/common v0.50 systemConfigs:
 * `/etc/containers/containers.conf.d` and, rootless, the user's `containers.conf.d`) and ignores once it is. They
 * cannot be merged into one file line by line (the same table twice is an error), so they are only named.
 */
function dropInFiles(env: NodeJS.ProcessEnv): string[] {
  const home = env.HOME ?? '';
  const configHome = env.XDG_CONFIG_HOME || join(home, '.config');
  const dirs = ['/etc/containers/containers.conf.d', join(configHome, 'containers', 'containers.conf.d')];
  return dirs.flatMap((dir) => {
    try {
      return readdirSync(dir)
        .filter((name) => name.endsWith('.conf'))
        .sort()
        .map((name) => join(dir, name));
    } catch {
      return [];
    }
  });
}

/**
 * A conf to carry over, read as a regular file of at most CONF_LIMIT: the variables may name anything, and a FIFO
 * or a device would block the read or never end. `variable` is the one that named it, if one did.
 */
async function readBaseConf(path: string, variable?: ContainersConfVariable): Promise<string> {
  try {
    return (await readRegularFile(path, CONF_LIMIT)).toString('utf8');
  } catch (error) {
    const why = `${path}, which cannot be carried into the action's containers.conf (${errorMessage(error)})`;
    if (variable) {
      throw new InputError(
        variable,
        `names ${why}; point it at a containers.conf file or unset it.`,
        'environment',
      );
    }
    throw new ActionError(`podman's containers.conf is ${why}.`);
  }
}

/** setMachineImage on a carried-over file; a file it cannot edit is named. */
function editBase(text: string, imagePath: string, base: string | undefined): string {
  try {
    return setMachineImage(text, imagePath);
  } catch (error) {
    throw new ActionError(
      `cannot set [machine] image in ${base ?? 'the containers.conf'}: ${errorMessage(error)}`,
    );
  }
}

export async function planContainersConf(
  imagePath: string,
  variable: ContainersConfVariable,
  ownPath: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<ConfPlan> {
  if (variable === CONTAINERS_CONF_OVERRIDE) {
    // Podman reads ONE override file: exporting ours would drop one an earlier step or the job's env set, with
    // every setting in it, so its text is carried over. Our own file from an earlier preseed step is such a
    // file too (it already holds what was carried then).
    const earlier = env[CONTAINERS_CONF_OVERRIDE];
    const base = earlier && existsSync(earlier) ? earlier : undefined;
    const baseText = base ? await readBaseConf(base, CONTAINERS_CONF_OVERRIDE) : '';
    return { variable, text: editBase(baseText, imagePath, base), ...(base ? { base } : {}) };
  }
  // Our own file from an earlier step is not a base: that would only nest our edit.
  const base = baseConfCandidates(env).find((p) => p !== ownPath && existsSync(p));
  const named = base !== undefined && base === env[CONTAINERS_CONF] ? CONTAINERS_CONF : undefined;
  const baseText = base ? await readBaseConf(base, named) : '';
  // A CONTAINERS_CONF set before already made podman skip them.
  const dropped = env[CONTAINERS_CONF] ? [] : dropInFiles(env);
  return {
    variable,
    text: editBase(baseText, imagePath, base),
    base,
    ...(dropped.length ? { dropped } : {}),
  };
}
