import type { InputSource } from '../../src/core/inputs.js';

/** Wraps a source to remember which names were read, so a test can prove readInputs reads every action.yml input. */
export class RecordingInputSource implements InputSource {
  readonly read = new Set<string>();

  constructor(private readonly inner: InputSource) {}

  get(name: string): string | undefined {
    this.read.add(name);
    return this.inner.get(name);
  }
}
