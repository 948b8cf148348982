import { describe, expect, it } from '@jest/globals';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { loadActionMetadata } from '../../src/core/action-metadata.js';
import { MapInputSource } from '../../src/core/inputs.js';
import { RecordingInputSource } from '../support/recording-input-source.js';
import { ACTION_NAMES, ACTIONS } from '../../src/actions/registry.js';
import { REPO_ROOT } from '../support/harness.js';

/** The least each action needs to parse; everything else comes from action.yml defaults or stays unset. */
const MINIMAL_VALID: Record<string, Record<string, string>> = {
  'push-multi-tag': { source: 'oci:/tmp/layout', repositories: '127.0.0.1:5000/app', tags: 'latest' },
  'prune-simplestreams': { path: '/srv/images' },
  'preseed-podman-vm': {},
  'remote-build-env': {},
};

describe('action.yml files agree with the code', () => {
  it('every action directory is registered, and every registered action has an action.yml', () => {
    expect(readdirSync(join(REPO_ROOT, 'actions')).sort()).toEqual([...ACTION_NAMES].sort());
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
});
