import { describe, expect, it } from '@jest/globals';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { BUILT_METADATA_FILE, loadActionMetadata } from '../../src/core/action-metadata.js';
import { MapInputSource } from '../../src/core/inputs.js';
import { RecordingInputSource } from '../support/recording-input-source.js';
import { withDefaults } from '../../src/cli/cli.js';
import { ACTION_NAMES, ACTIONS } from '../../src/actions/registry.js';
import { REPO_ROOT } from '../support/harness.js';

/** The least each action needs to parse; everything else comes from action.yml defaults or stays unset. */
const MINIMAL_VALID: Record<string, Record<string, string>> = {
  'push-multi-tag': { source: 'oci:/tmp/layout', repositories: '127.0.0.1:5000/app', tags: 'latest' },
  'prune-simplestreams': { path: '/srv/images' },
  'preseed-podman-vm': {},
  'remote-build-env': {},
};

/**
 * Settings that between them reach every reader with a default: some are read only in one mode (ssh) or with
 * another input set (init).
 */
const SCENARIOS: Record<string, Array<Record<string, string>>> = {
  ...Object.fromEntries(Object.entries(MINIMAL_VALID).map(([name, given]) => [name, [given]])),
  'preseed-podman-vm': [{}, { init: 'true', 'cache-scope': 'machine', start: 'true' }],
  'remote-build-env': [
    {},
    {
      mode: 'ssh',
      host: 'ssh://ci@build.example/run/podman/podman.sock',
      'ssh-key': 'KEY',
      'known-hosts': 'x',
    },
  ],
};

/** Every action's constants.ts: one skeleton, so every action has one. */
const CONSTANTS: Record<string, () => Promise<{ Inputs: object; Outputs: object }>> = {
  'preseed-podman-vm': () => import('../../src/actions/preseed-podman-vm/constants.js'),
  'prune-simplestreams': () => import('../../src/actions/prune-simplestreams/constants.js'),
  'push-multi-tag': () => import('../../src/actions/push-multi-tag/constants.js'),
  'remote-build-env': () => import('../../src/actions/remote-build-env/constants.js'),
};

describe('action.yml files agree with the code', () => {
  it('every action directory is registered, and every registered action has an action.yml', () => {
    expect(readdirSync(join(REPO_ROOT, 'actions')).sort()).toEqual([...ACTION_NAMES].sort());
  });

  it('the build wrote dist/actions.json (what the bundled CLI reads) from the action.yml files as they are', () => {
    const built = JSON.parse(readFileSync(join(REPO_ROOT, 'dist', BUILT_METADATA_FILE), 'utf8')) as object;
    expect(built).toEqual(
      Object.fromEntries(ACTION_NAMES.map((name) => [name, loadActionMetadata(name, REPO_ROOT)])),
    );
  });

  it.each(ACTION_NAMES)('%s: readInputs reads exactly the inputs its action.yml declares', (name) => {
    const meta = loadActionMetadata(name, REPO_ROOT);
    const given: Record<string, string> = {};
    for (const [input, spec] of Object.entries(meta.inputs))
      if (spec.default !== undefined) given[input] = spec.default;
    Object.assign(given, MINIMAL_VALID[name]);
    const recorder = new RecordingInputSource(new MapInputSource(given));
    ACTIONS[name]!.readInputs(recorder);
    expect([...recorder.read].sort()).toEqual(Object.keys(meta.inputs).sort());
  });

  it.each(ACTION_NAMES)('%s: action.yml runs on node24 with entry files in dist', (name) => {
    const doc = parse(readFileSync(join(REPO_ROOT, 'actions', name, 'action.yml'), 'utf8'));
    expect(doc.runs.using).toBe('node24');
    expect(doc.runs.main).toBe(`../../dist/${name}/main.js`);
    if (doc.runs.post) {
      expect(doc.runs.post).toBe(`../../dist/${name}/post.js`);
      expect(doc.runs['post-if']).toBe('always()');
    }
    for (const [input, spec] of Object.entries(doc.inputs as Record<string, { description?: string }>)) {
      expect(input).toMatch(/^[a-z][a-z0-9-]*$/);
      expect(spec.description?.trim()).toBeTruthy();
    }
  });

  it('the root action.yml offers every input and output of the four, with the same defaults', async () => {
    const root = parse(readFileSync(join(REPO_ROOT, 'action.yml'), 'utf8'));
    expect(root.inputs.action.required).toBe(true);
    for (const name of ACTION_NAMES) {
      const meta = loadActionMetadata(name, REPO_ROOT);
      for (const [input, spec] of Object.entries(meta.inputs)) {
        expect(root.inputs[input]).toBeDefined();
        expect(
          root.inputs[input].default === undefined ? undefined : String(root.inputs[input].default),
        ).toBe(spec.default);
      }
      for (const output of Object.keys(meta.outputs)) expect(root.outputs[output]).toBeDefined();
    }
  });

  /*
   * The runner passes action.yml defaults as INPUT_*, the CLI applies them from the same file; the readers'
   * fallbacks only act when an input arrives empty. So reading with the action.yml defaults and reading with no
   * defaults at all must give the same inputs, in every scenario: a code default that differs from action.yml
   * (or one action.yml lacks) shows up as a difference.
   */
  it.each(ACTION_NAMES)('%s: every default in the code is the action.yml default', (name) => {
    const meta = loadActionMetadata(name, REPO_ROOT);
    for (const given of SCENARIOS[name]!) {
      const withYmlDefaults = new MapInputSource(withDefaults(meta, new Map(Object.entries(given))));
      const withoutDefaults = new MapInputSource(given);
      expect(ACTIONS[name]!.readInputs(withoutDefaults)).toEqual(ACTIONS[name]!.readInputs(withYmlDefaults));
    }
  });

  it.each(ACTION_NAMES)(
    '%s: has the one skeleton (state.ts and post.ts exactly when action.yml has a post)',
    (name) => {
      const files = readdirSync(join(REPO_ROOT, 'src/actions', name));
      const hasPost = Boolean(
        parse(readFileSync(join(REPO_ROOT, 'actions', name, 'action.yml'), 'utf8')).runs.post,
      );
      const skeleton = ['constants.ts', 'index.ts', 'inputs.ts', 'main.ts', 'post.ts', 'state.ts'];
      expect(skeleton.filter((f) => files.includes(f))).toEqual(
        skeleton.filter((f) => hasPost || (f !== 'post.ts' && f !== 'state.ts')),
      );
      expect(Object.keys(CONSTANTS)).toContain(name);
    },
  );

  it.each(Object.keys(CONSTANTS))(
    '%s: constants.ts names exactly the inputs and outputs of action.yml',
    async (name) => {
      const meta = loadActionMetadata(name, REPO_ROOT);
      const { Inputs, Outputs } = await CONSTANTS[name]!();
      expect(Object.values(Inputs).sort()).toEqual(Object.keys(meta.inputs).sort());
      expect(Object.values(Outputs).sort()).toEqual(Object.keys(meta.outputs).sort());
    },
  );
});
