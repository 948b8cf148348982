/**
 * Reads actions/<name>/action.yml (or the bundle's JSON copy of them) at run time: the CLI takes defaults and
 * --help text from it, so the action and the CLI share one definition of every input.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';

export interface InputSpec {
  description: string;
  required: boolean;
  default?: string;
}

export interface ActionMetadata {
  name: string;
  description: string;
  inputs: Record<string, InputSpec>;
  outputs: Record<string, { description: string }>;
}

/** The package root: the nearest directory above this file that holds actions/ and action.yml. */
export function packageRoot(from: string = fileURLToPath(import.meta.url)): string {
  let dir = dirname(from);
  for (;;) {
    if (existsSync(join(dir, 'action.yml')) && existsSync(join(dir, 'actions'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`cannot find the image-ci-actions package root above ${from}`);
    dir = parent;
  }
}

export function parseActionMetadata(text: string): ActionMetadata {
  const doc = parse(text) as {
    name?: string;
    description?: string;
    inputs?: Record<string, { description?: string; required?: boolean; default?: unknown }>;
    outputs?: Record<string, { description?: string }>;
  };
  const inputs: Record<string, InputSpec> = {};
  for (const [name, spec] of Object.entries(doc.inputs ?? {})) {
    inputs[name] = {
      description: (spec.description ?? '').trim(),
      required: spec.required === true,
      ...(spec.default !== undefined ? { default: String(spec.default) } : {}),
    };
  }
  const outputs: Record<string, { description: string }> = {};
  for (const [name, spec] of Object.entries(doc.outputs ?? {})) {
    outputs[name] = { description: (spec.description ?? '').trim() };
  }
  return { name: doc.name ?? '', description: doc.description ?? '', inputs, outputs };
}

/**
 * Every action's metadata as JSON, which the build writes next to the bundle (.ci/build.mjs) from the same
 * action.yml files, so the CLI starts without parsing YAML (about 30 ms of its 0.3 s start). The sources have
 * none beside them: run from there, the action.yml files are read.
 */
export const BUILT_METADATA_FILE = 'actions.json';

function builtMetadata(): Record<string, ActionMetadata> | undefined {
  const path = join(dirname(fileURLToPath(import.meta.url)), BUILT_METADATA_FILE);
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Record<string, ActionMetadata>;
  } catch {
    // Absent (the sources) or damaged (an install cut short): it is only a copy of the action.yml files, which
    // are shipped beside it.
    return undefined;
  }
}

/** An action's metadata: from the build's JSON when running the bundle, else (or for another `root`) its YAML. */
export function loadActionMetadata(action: string, root?: string): ActionMetadata {
  const built = root === undefined ? builtMetadata()?.[action] : undefined;
  return (
    built ??
    parseActionMetadata(readFileSync(join(root ?? packageRoot(), 'actions', action, 'action.yml'), 'utf8'))
  );
}
