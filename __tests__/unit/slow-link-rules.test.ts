/**
 * The two rules for slow links, as numbers: how long a registry may take to answer what changes it
 * (commitAnswerMs), and when a download that keeps trickling counts as stalled (the low-speed limit).
 */
import { describe, expect, it } from '@jest/globals';
import { LowSpeedLimit, withLowSpeedLimit } from '../../src/core/low-speed.js';
import { commitAnswerMs } from '../../src/core/oci/transport.js';

const GiB = 1024 ** 3;

describe('commit answer wait', () => {
  it('is five silence timeouts plus 2 minutes per GiB the registry works on', () => {
    expect(commitAnswerMs(60_000, 0)).toBe(300_000);
    expect(commitAnswerMs(60_000, 10 * GiB)).toBe(300_000 + 1_200_000);
    expect(commitAnswerMs(500, GiB / 2)).toBe(2_500 + 60_000);
  });
});

describe('low-speed limit', () => {
  it('judges whole windows of waiting: a burst after a long pause passes, a steady trickle does not', () => {
    const burst = new LowSpeedLimit(60_000);
    expect(burst.arrived(0, 59_000)).toBeUndefined();
    expect(burst.arrived(1024 * 1024, 1_000)).toBeUndefined();
    const steady = new LowSpeedLimit(60_000);
    for (let s = 0; s < 59; s++) expect(steady.arrived(2048, 1000)).toBeUndefined();
    expect(steady.arrived(2048, 1000)).toBeUndefined();
    const trickle = new LowSpeedLimit(60_000);
    for (let s = 0; s < 59; s++) expect(trickle.arrived(500, 1000)).toBeUndefined();
    expect(trickle.arrived(500, 1000)).toBe('only 29.3 KiB in 60 s, under 1.0 KiB/s (stalled)');
    // Silence is the silence timeout's to tell, in its own words.
    expect(new LowSpeedLimit(60_000).arrived(0, 60_000)).toBeUndefined();
  });

  it('counts only the time spent waiting for the source, not the time its reader takes', async () => {
    async function* source() {
      for (let i = 0; i < 5; i++) yield Buffer.alloc(10);
    }
    const got: number[] = [];
    // A reader that takes 30 ms per chunk, on a source that is always ready: 50 B in 150 ms of wall time.
    for await (const chunk of withLowSpeedLimit(source(), 100, (reason) => new Error(reason))) {
      got.push(chunk.length);
      await new Promise((later) => setTimeout(later, 30));
    }
    expect(got).toEqual([10, 10, 10, 10, 10]);
  });
});
