/**
 * The relay between zstd and tar reads into one buffer and reuses it: these tests hold it to handing on exactly
 * the bytes a real child wrote, however late the destination takes them, and to stopping both ends as
 * pipeline() does when the check or the destination fails.
 */
import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { Server } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { ChildOutputRelay } from '../../src/core/child-output-relay.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'ici-unit-relay-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** The relay's socket directories in the temp dir (none may stay once it is open). */
const relayDirs = () => readdirSync(tmpdir()).filter((name) => name.startsWith('image-ci-relay-'));

const exited = (child: ChildProcess) =>
  new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) =>
    child.on('close', (code, signal) => done({ code, signal })),
  );

/** Takes each chunk only after a delay, copying it then: a relay that reused its buffer early would corrupt it. */
function lateCollector(delayMs: number) {
  const parts: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      setTimeout(() => {
        parts.push(Buffer.from(chunk));
        done();
      }, delayMs);
    },
  });
  return { sink, bytes: () => Buffer.concat(parts) };
}

describe('child output relay', () => {
  it('hands on exactly what the child wrote, in order, to a destination that takes it late', async () => {
    const data = randomBytes(24 * 1024 * 1024);
    const file = join(dir, 'data');
    writeFileSync(file, data);
    const relay = await ChildOutputRelay.open();
    expect(relayDirs()).toEqual([]);
    const { sink, bytes } = lateCollector(1);
    let shown = 0;
    const relayed = relay.into(sink, (chunk) => (shown += chunk.length));
    const child = exited(spawn('cat', [file], { stdio: ['ignore', relay.childEnd, 'inherit'] }));
    relay.handedOver();
    expect(await relayed).toBeUndefined();
    expect(await child).toEqual({ code: 0, signal: null });
    expect(relayDirs()).toEqual([]);
    expect(shown).toBe(data.length);
    expect(bytes().equals(data)).toBe(true);
  });

  it('loses nothing the child wrote before the relay started', async () => {
    const relay = await ChildOutputRelay.open();
    const child = exited(spawn('printf', ['early bytes'], { stdio: ['ignore', relay.childEnd, 'inherit'] }));
    relay.handedOver();
    await child;
    const { sink, bytes } = lateCollector(0);
    expect(await relay.into(sink, () => undefined)).toBeUndefined();
    expect(bytes().toString()).toBe('early bytes');
  });

  it('stops at a chunk the check refuses: none of it goes on, and the child is cut off', async () => {
    const relay = await ChildOutputRelay.open();
    const { sink, bytes } = lateCollector(0);
    let chunks = 0;
    const relayed = relay.into(sink, () => {
      if (++chunks === 3) throw new Error('refused member');
    });
    // Writes forever: only a closed output stops it.
    const child = exited(spawn('cat', ['/dev/zero'], { stdio: ['ignore', relay.childEnd, 'inherit'] }));
    relay.handedOver();
    const error = await relayed;
    expect(error?.message).toBe('refused member');
    expect(sink.destroyed).toBe(true);
    // cat's write fails (EPIPE, or SIGPIPE) once the relay closed its end.
    const exit = await child;
    expect(exit.code !== 0 || exit.signal !== null).toBe(true);
    // The first two chunks went on, the refused third did not.
    expect(bytes().length).toBeGreaterThan(0);
    expect(bytes().length).toBeLessThanOrEqual(2 * 1024 * 1024);
  });

  it('stops when the destination fails, and cuts the child off', async () => {
    const relay = await ChildOutputRelay.open();
    const broken = new Writable({
      write(_chunk, _encoding, done) {
        done(new Error('tar went away'));
      },
    });
    broken.on('error', () => undefined);
    const relayed = relay.into(broken, () => undefined);
    const child = exited(spawn('cat', ['/dev/zero'], { stdio: ['ignore', relay.childEnd, 'inherit'] }));
    relay.handedOver();
    expect((await relayed)?.message).toBe('tar went away');
    const exit = await child;
    expect(exit.code !== 0 || exit.signal !== null).toBe(true);
  });

  it('refuses a temp dir whose socket path would not fit a unix socket address, leaving nothing there', async () => {
    // libuv cuts a longer path to the address size: the socket would be made outside the private dir, and stay.
    // (TMPDIR itself cannot be changed here: jest gives the test a copy of the environment, os.tmpdir() not.)
    const long = join(dir, 'd'.repeat(100));
    mkdirSync(long);
    await expect(ChildOutputRelay.open(long)).rejects.toThrow(
      /^the temp dir's path is too long for a socket: .*\/s \(1\d\d bytes, at most 10\d\); set TMPDIR to a shorter path$/,
    );
    expect(readdirSync(long)).toEqual([]);
    expect(readdirSync(dir)).toEqual(['d'.repeat(100)]);
  });

  it('settles when the destination is closed after the last write, before the child ends its output', async () => {
    // A child's stdin is destroyed when the child exits: GNU tar exits at the end-of-archive block, without
    // waiting for the end of its input.
    const closedEarly = new Writable({
      write(_chunk, _encoding, done) {
        done();
        this.destroy();
      },
    });
    const relay = await ChildOutputRelay.open();
    const relayed = relay.into(closedEarly, () => undefined);
    const child = exited(spawn('printf', ['last bytes'], { stdio: ['ignore', relay.childEnd, 'inherit'] }));
    relay.handedOver();
    expect(await child).toEqual({ code: 0, signal: null });
    expect((await relayed)?.message).toBe('Premature close');
  });

  it('takes its own connection as the child end when another process of the user connected first', async () => {
    // The other process connects (and goes) between listen and the relay's own connect: its connection is
    // accepted first. (Another user cannot: the socket's directory is 0700.)
    const emit = Server.prototype.emit;
    Server.prototype.emit = function (this: Server, event: string | symbol, ...args: unknown[]): boolean {
      if (event === 'listening') {
        Server.prototype.emit = emit;
        const script = `require('net').connect(process.argv[1]).on('connect', () => process.exit())`;
        execFileSync(process.execPath, ['-e', script, this.address() as string]);
      }
      return Reflect.apply(emit, this, [event, ...args]) as boolean;
    } as typeof emit;
    let relay: ChildOutputRelay;
    try {
      relay = await ChildOutputRelay.open();
    } finally {
      Server.prototype.emit = emit;
    }
    const { sink, bytes } = lateCollector(0);
    const relayed = relay.into(sink, () => undefined);
    const child = exited(spawn('printf', ['the bytes'], { stdio: ['ignore', relay.childEnd, 'inherit'] }));
    relay.handedOver();
    expect(await child).toEqual({ code: 0, signal: null });
    expect(await relayed).toBeUndefined();
    expect(bytes().toString()).toBe('the bytes');
  });
});
