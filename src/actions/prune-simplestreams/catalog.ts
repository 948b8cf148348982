/**
 * Loading and validating streams/v1/index.json and the images.json it points at, and writing them back with
 * every field we do not touch preserved and the original formatting (indent, trailing newline) kept.
 */
import { randomBytes } from 'node:crypto';
import { realpath, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { FILE_TOO_LARGE, NOT_A_REGULAR_FILE, readRegularFile } from '../../core/files.js';
import { externalText } from '../../core/oci/response.js';
import { ActionError, errorMessage } from '../../core/run.js';
import { formatBytes } from '../../core/summary.js';
import { insideRoot, normaliseRepoPath } from './repo-paths.js';
import { compareC } from './versions.js';

export const INDEX_PATH = 'streams/v1/index.json';
const IMAGE_DOWNLOADS = 'image-downloads';
const MAX_LISTED_PROBLEMS = 10;
/** About the longest string node makes (2^29 characters); a larger file could not be parsed anyway. */
const METADATA_LIMIT = 512 * 1024 * 1024;

export type JsonObject = Record<string, unknown>;

export interface JsonStyle {
  indent: string;
  trailingNewline: boolean;
  /** The marker of numbers kept as written (see keepRawNumbers), when the text had any. */
  rawNumbers?: string;
}

export interface JsonDoc {
  /** Repository-relative path. */
  path: string;
  text: string;
  data: JsonObject;
  style: JsonStyle;
  /** Permission bits, kept when the file is rewritten. */
  mode: number;
  /**
   * Where the file really is (repository-relative), when `path` is a symlink: it is rewritten there, so the link
   * stays a link, and that file is as live as the metadata itself.
   */
  real?: string;
}

export interface CatalogItem {
  name: string;
  /** Normalised repository-relative path. */
  path: string;
  ftype: string;
  size?: number;
  sha256?: string;
  deltaBase?: string;
}

export interface CatalogVersion {
  name: string;
  items: CatalogItem[];
}

export interface CatalogProduct {
  name: string;
  versions: CatalogVersion[];
}

export interface Catalog {
  index: JsonDoc;
  /** The key under index.json's `index` whose datatype is image-downloads (normally `images`). */
  indexEntry: string;
  images: JsonDoc;
  products: CatalogProduct[];
}

/**
 * Each line of `text` as one printable line (see externalText), its indent and the line breaks between kept: the
 * messages this prune builds quote the repository (keys, paths, JSON.parse's quote of a file's first characters),
 * and an escape sequence there would colour or erase the log, a bidi control reorder what is read.
 */
export function printableLines(text: string): string {
  return text
    .split('\n')
    .map((line) => `${/^ */.exec(line)![0]}${externalText(line, 16_000)}`)
    .join('\n');
}

/** A repository this prune refuses to touch: malformed or unsafe metadata. Nothing has been changed. */
export class RepoError extends ActionError {
  constructor(message: string) {
    super(printableLines(`${message} Nothing was changed.`));
    this.name = 'RepoError';
  }
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function detectStyle(text: string): JsonStyle {
  const m = /^\s*[{[]\r?\n([ \t]+)\S/.exec(text);
  return { indent: m ? m[1]! : '', trailingNewline: text.endsWith('\n') };
}

export function serializeJson(data: unknown, style: JsonStyle): string {
  let body = style.indent ? JSON.stringify(data, null, style.indent) : JSON.stringify(data);
  if (style.rawNumbers) {
    body = body.replace(new RegExp(`"${style.rawNumbers}([^"]*)"`, 'g'), '$1');
  }
  return style.trailingNewline ? `${body}\n` : body;
}

/** A JSON number's exact value, spelled one way: sign (zero's too), digits without leading or trailing zeros, exponent. */
function exactValue(token: string): string | undefined {
  const m = /^(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(token);
  if (!m) return undefined; // Infinity, NaN
  const fraction = m[3] ?? '';
  const all = `${m[2]}${fraction}`.replace(/^0+/, '');
  // The sign stays: a double holds -0 but JSON.stringify writes 0, so -0 must differ from String(-0).
  if (all === '') return `${m[1]}0`;
  const digits = all.replace(/0+$/, '');
  return `${m[1]}${digits}e${Number(m[4] ?? 0) - fraction.length + all.length - digits.length}`;
}

/**
 * The text with each number a double cannot hold exactly (a 64-bit id, 1e400, more digits than 17) made a string
 * behind a marker, so that a rewrite writes it back as it was: JSON.parse would round it, or make it null, in fields
 * this prune never reads (Go's clients, and the publisher's tools, read them exactly). Numbers a double holds
 * (`1.50` is 1.5) are parsed as usual. Strings are skipped as duplicateKeys does.
 */
function keepRawNumbers(text: string): { text: string; marker?: string } {
  const marker = `ici-raw-number-${randomBytes(16).toString('hex')}:`;
  const number = /-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
  let out = '';
  let from = 0;
  let kept = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '"') {
      while (text[++i] !== '"' && i < text.length) if (text[i] === '\\') i++;
    } else if (c === '-' || (c >= '0' && c <= '9')) {
      number.lastIndex = i;
      const token = number.exec(text)?.[0];
      if (token === undefined) continue;
      if (exactValue(token) !== exactValue(String(Number(token)))) {
        out += `${text.slice(from, i)}"${marker}${token}"`;
        from = i + token.length;
        kept = true;
      }
      i += token.length - 1;
    }
  }
  return kept ? { text: out + text.slice(from), marker } : { text };
}

/**
 * How deep this prune lets metadata nest. Simplestreams needs six levels (products, versions, items and their
 * fields); a rewrite of a much deeper file would overflow JSON.stringify's stack halfway through the prune.
 */
const MAX_JSON_DEPTH = 1000;

/**
 * Keys that occur twice in one object (as `where.key`), in a text JSON.parse accepted, or `tooDeep` (and the
 * search stopped) past MAX_JSON_DEPTH. JSON.parse keeps the last of repeated keys; incus and LXD read metadata
 * with Go's encoding/json, which merges the objects of a repeated struct field (`versions`, `items`,
 * `products`): the clients would see versions this prune never saw, and lose their files. A plain character
 * loop: a regular expression over a hostile multi-megabyte string overflows the stack.
 */
export function duplicateKeys(text: string): { duplicates: string[]; tooDeep: boolean } {
  const duplicates: string[] = [];
  const stack: { where: string; keys?: Set<string>; atKey: boolean; key?: string }[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    const top = stack[stack.length - 1];
    if (c === '"') {
      let end = i + 1;
      while (text[end] !== '"') end += text[end] === '\\' ? 2 : 1;
      if (top?.keys && top.atKey) {
        const key = JSON.parse(text.slice(i, end + 1)) as string;
        if (top.keys.has(key)) duplicates.push(`${top.where}.${key}`.slice(1));
        top.keys.add(key);
        top.key = key;
        top.atKey = false;
      }
      i = end;
    } else if (c === '{' || c === '[') {
      if (stack.length === MAX_JSON_DEPTH) return { duplicates, tooDeep: true };
      const where = top ? (top.keys ? `${top.where}.${top.key}` : `${top.where}[]`) : '';
      stack.push({ where, keys: c === '{' ? new Set() : undefined, atKey: c === '{' });
    } else if (c === '}' || c === ']') {
      stack.pop();
    } else if (c === ',' && top?.keys) {
      top.atKey = true;
    }
  }
  return { duplicates, tooDeep: false };
}

/** Parses one metadata file's text; `what` names the expected format in the error. */
export function parseJsonDoc(path: string, text: string, what: string, mode = 0o644): JsonDoc {
  let data: unknown;
  let marker: string | undefined;
  try {
    data = JSON.parse(text);
    const raw = keepRawNumbers(text);
    if (raw.marker) {
      data = JSON.parse(raw.text);
      marker = raw.marker;
    }
  } catch (error) {
    throw new RepoError(`${path} is not valid JSON (${errorMessage(error)}).`);
  }
  if (!isObject(data)) throw new RepoError(`${path} must hold a JSON object (${what}).`);
  const { duplicates, tooDeep } = duplicateKeys(text);
  if (tooDeep) {
    throw new RepoError(
      `${path} nests objects or arrays more than ${MAX_JSON_DEPTH} levels deep (simplestreams needs 6); ` +
        'this prune cannot rewrite it.',
    );
  }
  const problems = duplicates.map((key) => `duplicate key "${key}" (incus would merge or pick the last)`);
  if (problems.length > 0) throw new RepoError(listProblems(`${path} is ambiguous`, problems));
  const style = detectStyle(text);
  return { path, text, data, style: marker ? { ...style, rawNumbers: marker } : style, mode };
}

/**
 * Keys of `object` Go's encoding/json would read as one of `fields` although spelled differently: it matches
 * names case-insensitively with Unicode simple folding (`PATH`, `Versions`, `ver\u017fions` with a long s; a
 * Kelvin sign lowercases to k), the last of several spellings winning. This prune and the clients could read
 * different values for such a field, so it is refused.
 */
function goCaseTwins(object: JsonObject, fields: readonly string[], where: string, problems: string[]): void {
  for (const key of Object.keys(object)) {
    const folded = key.toLowerCase().replace(/\u017f/g, 's');
    const field = fields.find((f) => f !== key && f === folded);
    if (field) problems.push(`${where}: key "${key}" is read as "${field}" by incus; spell it "${field}"`);
  }
}

/**
 * A metadata file's bytes: only a regular file, and no larger than a string node can hold at all (images.json of
 * a large repository is tens of MB). `shown` names it in errors.
 */
async function readMetadataFile(file: string, shown: string): Promise<Buffer> {
  try {
    return await readRegularFile(file, METADATA_LIMIT);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === NOT_A_REGULAR_FILE) throw new RepoError(`${shown} is not a regular file.`);
    if (code === FILE_TOO_LARGE)
      throw new RepoError(`${shown} is larger than ${formatBytes(METADATA_LIMIT)}.`);
    throw error;
  }
}

/**
 * Reads one metadata file. A symlink may put it elsewhere in the repository, never outside: the prune rewrites it
 * (and would otherwise write outside the repository because a symlink in it said so).
 */
async function readJsonDoc(root: string, path: string, what: string): Promise<JsonDoc> {
  try {
    const real = insideRoot(root, await realpath(join(root, path)));
    if (real === undefined || real === '')
      throw new RepoError(`${path} resolves outside the repository (symlink).`);
    // Opening a FIFO waits for a writer, for ever: only a regular file is read (and opened).
    const text = (await readMetadataFile(join(root, real), path)).toString('utf8');
    const doc = parseJsonDoc(path, text, what, (await stat(join(root, real))).mode & 0o777);
    return real === path ? doc : { ...doc, real };
  } catch (error) {
    if (error instanceof RepoError) throw error;
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT')
      throw new RepoError(`${path} is missing: ${root} is not a simplestreams repository.`);
    throw new RepoError(`cannot read ${path}: ${errorMessage(error)}.`);
  }
}

/** The item fields a prune reads. */
const ITEM_FIELDS = ['path', 'size', 'sha256', 'ftype', 'delta_base'];

function findIndexEntry(index: JsonDoc): { key: string; imagesPath: string } {
  const entries = index.data.index;
  const problems: string[] = [];
  goCaseTwins(index.data, ['index'], index.path, problems);
  if (isObject(entries)) {
    for (const [key, entry] of Object.entries(entries)) {
      if (isObject(entry))
        goCaseTwins(entry, ['datatype', 'path', 'products'], `${index.path}: index.${key}`, problems);
    }
  }
  if (problems.length > 0) throw new RepoError(listProblems(`${index.path} is ambiguous`, problems));
  if (!isObject(entries)) throw new RepoError(`${index.path} has no "index" object.`);
  const matches = Object.entries(entries).filter(([, e]) => isObject(e) && e.datatype === IMAGE_DOWNLOADS);
  if (matches.length !== 1) {
    throw new RepoError(
      `${index.path} must have exactly one "${IMAGE_DOWNLOADS}" entry under "index", found ${matches.length}.`,
    );
  }
  const [key, entry] = matches[0]! as [string, JsonObject];
  if (typeof entry.path !== 'string')
    throw new RepoError(`${index.path}: index.${key}.path is not a string.`);
  const resolved = clientPath(entry.path);
  if ('error' in resolved)
    throw new RepoError(`${index.path}: index.${key}.path '${entry.path}'${resolved.error}.`);
  return { key, imagesPath: resolved.path };
}

/**
 * A path from the metadata (index.json's path to images.json, an item's path) as the repository file clients get,
 * or why none (a text to follow the quoted path). incus and LXD join it to the repository URL with Go's
 * url.JoinPath, which takes it as an escaped URL path that the web server decodes (`images%2Ejson` names
 * images.json) and cleans it still escaped: a `..` pops a whole escaped segment (`sub%2Fx/..` is nothing), while an
 * escape that decodes to `..` (`%2e%2e`, `x%2F..`) is left to the web server, and servers differ on what they then
 * open.
 */
export function clientPath(raw: string): { path: string } | { error: string } {
  const cleaned = normaliseRepoPath(raw);
  const unescaped = unescapeUrlPath('error' in cleaned ? raw : cleaned.path);
  if (unescaped === undefined) {
    return {
      error:
        " has a '%' that starts no %XX escape; incus reads this path as an escaped URL path, which it is not, " +
        'so clients never get the file it names',
    };
  }
  if (unescaped === NOT_UTF8) {
    return {
      error:
        ' decodes to a file name that is not UTF-8; clients get the file of those very bytes, which this prune ' +
        'cannot name (it would read another). Name the file in UTF-8',
    };
  }
  const decoded = unescaped === raw ? '' : ` (as clients decode it: '${unescaped}')`;
  if ('error' in cleaned) return { error: `${decoded} ${cleaned.error}` };
  if (unescaped.split('/').includes('..')) {
    return {
      error: `${decoded} has an escaped '..', which web servers resolve in different ways; write the path without it`,
    };
  }
  const normalised = normaliseRepoPath(unescaped);
  return 'error' in normalised ? { error: `${decoded} ${normalised.error}` } : normalised;
}

/** unescapeUrlPath's answer for escapes that make bytes no UTF-8 string holds. */
export const NOT_UTF8 = Symbol('not UTF-8');

/**
 * index.json's `path` as the file clients get: incus and LXD join it to the repository URL with Go's url.JoinPath,
 * which takes it as already escaped, so a web server decodes `%2E` before it maps the path to a file
 * (`images%2Ejson` is images.json, `%2e%2e` is `..`). Undefined for a `%` that starts no escape (Go's join then
 * keeps the repository URL's own path: clients never ask for this one).
 * NOT_UTF8 when the bytes decoded are not UTF-8 (`%FF`): the server opens the file of those raw bytes, while a
 * lenient decode would turn them into U+FFFD, the name of another file (a decoy).
 */
export function unescapeUrlPath(raw: string): string | typeof NOT_UTF8 | undefined {
  if (!raw.includes('%')) return raw;
  if (/%(?![0-9A-Fa-f]{2})/.test(raw)) return undefined;
  const parts = raw.split(/(%[0-9A-Fa-f]{2})/);
  const bytes = parts.map((part) =>
    part.startsWith('%') ? Buffer.from([parseInt(part.slice(1), 16)]) : Buffer.from(part, 'utf8'),
  );
  try {
    return new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(Buffer.concat(bytes));
  } catch {
    return NOT_UTF8;
  }
}

function parseProducts(images: JsonDoc, problems: string[]): CatalogProduct[] {
  const products = images.data.products;
  goCaseTwins(images.data, ['products'], images.path, problems);
  if (!isObject(products)) throw new RepoError(`${images.path} has no "products" object.`);
  const result: CatalogProduct[] = [];
  for (const [productName, product] of Object.entries(products)) {
    const where = `${images.path}: product ${productName}`;
    if (!isObject(product) || !isObject(product.versions)) {
      problems.push(`${where} has no "versions" object`);
      continue;
    }
    goCaseTwins(product, ['versions'], where, problems);
    const versions: CatalogVersion[] = [];
    for (const [versionName, version] of Object.entries(product.versions)) {
      if (!isObject(version) || !isObject(version.items)) {
        problems.push(`${where} version ${versionName} has no "items" object`);
        continue;
      }
      goCaseTwins(version, ['items'], `${where} version ${versionName}`, problems);
      const items: CatalogItem[] = [];
      for (const [itemName, item] of Object.entries(version.items)) {
        const at = `${where} version ${versionName} item ${itemName}`;
        if (!isObject(item) || typeof item.path !== 'string') {
          problems.push(`${at} has no "path" string`);
          continue;
        }
        goCaseTwins(item, ITEM_FIELDS, at, problems);
        const normalised = clientPath(item.path);
        if ('error' in normalised) {
          problems.push(`${at}: path '${item.path}'${normalised.error}`);
          continue;
        }
        if (item.size !== undefined && (typeof item.size !== 'number' || !Number.isSafeInteger(item.size))) {
          problems.push(`${at}: size is not a whole number`);
          continue;
        }
        items.push({
          name: itemName,
          path: normalised.path,
          ftype: typeof item.ftype === 'string' ? item.ftype : '',
          size: item.size as number | undefined,
          sha256: typeof item.sha256 === 'string' ? item.sha256 : undefined,
          deltaBase: typeof item.delta_base === 'string' ? item.delta_base : undefined,
        });
      }
      versions.push({ name: versionName, items });
    }
    result.push({ name: productName, versions });
  }
  return result;
}

/** Where a metadata file is on disk, repository-relative: the file a rewrite replaces. */
export function fileOf(doc: JsonDoc): string {
  return doc.real ?? doc.path;
}

export function listProblems(intro: string, problems: readonly string[]): string {
  // One line per problem: they name paths and products from images.json, which may hold line breaks.
  const shown = problems.slice(0, MAX_LISTED_PROBLEMS).map((p) => `\n  - ${externalText(p, 4000)}`);
  const more =
    problems.length > MAX_LISTED_PROBLEMS
      ? `\n  - ... and ${problems.length - MAX_LISTED_PROBLEMS} more`
      : '';
  return `${intro}:${shown.join('')}${more}\n`;
}

/** Reads and validates both metadata files; throws RepoError on anything a safe prune cannot work with. */
export async function loadCatalog(root: string): Promise<Catalog> {
  const index = await readJsonDoc(root, INDEX_PATH, 'index:1.0');
  const images = await readJsonDoc(root, findIndexEntry(index).imagesPath, 'products:1.0');
  return catalogFromDocs(index, images);
}

export function catalogFromDocs(index: JsonDoc, images: JsonDoc): Catalog {
  const { key } = findIndexEntry(index);
  const problems: string[] = [];
  const products = parseProducts(images, problems);
  if (problems.length > 0) throw new RepoError(listProblems(`${images.path} is not usable`, problems));
  return { index, indexEntry: key, images, products };
}

/** What to take out of images.json; everything else is carried over as it was, unknown fields included. */
export interface Removals {
  products: Set<string>;
  versions: Map<string, Set<string>>;
  /** Keyed by `${product}\0${version}`. */
  items: Map<string, Set<string>>;
}

export function itemKey(product: string, version: string): string {
  return `${product}\0${version}`;
}

export function isEmptyRemovals(r: Removals): boolean {
  return r.products.size === 0 && r.versions.size === 0 && r.items.size === 0;
}

/** A product without its removed versions and items; the very same object when none of it is removed. */
function productWithout(name: string, product: JsonObject, removals: Removals): JsonObject {
  const droppedVersions = removals.versions.get(name);
  const versions = product.versions as Record<string, JsonObject>;
  const touched =
    droppedVersions !== undefined || Object.keys(versions).some((v) => removals.items.has(itemKey(name, v)));
  if (!touched) return product;
  const nextVersions = Object.fromEntries(
    Object.entries(versions)
      .filter(([versionName]) => !droppedVersions?.has(versionName))
      .map(([versionName, version]) => {
        const droppedItems = removals.items.get(itemKey(name, versionName));
        if (!droppedItems) return [versionName, version];
        const items = Object.entries(version.items as JsonObject).filter(([k]) => !droppedItems.has(k));
        return [versionName, { ...version, items: Object.fromEntries(items) }];
      }),
  );
  return { ...product, versions: nextVersions };
}

/**
 * A copy of images.json data without the removed parts; untouched subtrees are shared, key order is kept.
 * Names come from the repository, so new objects are built with Object.fromEntries (own properties): assigning
 * to a key named `__proto__` would set the object's prototype instead and lose that product or version.
 */
export function applyRemovals(data: JsonObject, removals: Removals): JsonObject {
  const products = data.products as Record<string, JsonObject>;
  const nextProducts = Object.fromEntries(
    Object.entries(products)
      .filter(([name]) => !removals.products.has(name))
      .map(([name, product]) => [name, productWithout(name, product, removals)]),
  );
  return { ...data, products: nextProducts };
}

/**
 * index.json with its product list rebuilt (sorted) from images.json, or undefined when it already lists
 * exactly those products (in any order): an unchanged file is never rewritten.
 */
export function rebuildIndex(
  index: JsonObject,
  entryKey: string,
  productNames: readonly string[],
): JsonObject | undefined {
  const entries = index.index as Record<string, JsonObject>;
  const entry = entries[entryKey]!;
  const current = Array.isArray(entry.products) ? entry.products.map(String) : [];
  const wanted = [...new Set(productNames)].sort(compareC);
  const currentSet = new Set(current);
  if (
    current.length === wanted.length &&
    currentSet.size === wanted.length &&
    wanted.every((p) => currentSet.has(p))
  ) {
    return undefined;
  }
  return { ...index, index: { ...entries, [entryKey]: { ...entry, products: wanted } } };
}
