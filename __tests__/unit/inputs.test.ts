import { describe, expect, it } from '@jest/globals';
import {
  EnvInputSource,
  MapInputSource,
  parseBytes,
  parseDuration,
  readBoolean,
  readBytes,
  readDuration,
  readEnum,
  readInteger,
  readList,
  readRequiredString,
} from '../../src/core/inputs.js';
import { inputError } from '../support/input-error.js';

const src = (values: Record<string, string>) => new MapInputSource(values);

describe('EnvInputSource', () => {
  it('reads INPUT_ variables the way the runner names them, trimmed, empty as missing', () => {
    const env = { 'INPUT_KEEP-VERSIONS': ' 3 ', INPUT_MY_INPUT: 'x', INPUT_EMPTY: '  ' };
    const s = new EnvInputSource(env);
    expect(s.get('keep-versions')).toBe('3');
    expect(s.get('my input')).toBe('x');
    expect(s.get('empty')).toBeUndefined();
    expect(s.get('absent')).toBeUndefined();
  });
});

describe('typed readers', () => {
  it('required string names the input', () => {
    expect(readRequiredString(src({ path: '/x' }), 'path')).toBe('/x');
    const e = inputError(() => readRequiredString(src({}), 'path'));
    expect(e.input).toBe('path');
    expect(e.message).toBe("Input 'path': is required but was not given.");
  });

  it('booleans are strict', () => {
    expect(readBoolean(src({ a: 'TRUE' }), 'a', false)).toBe(true);
    expect(readBoolean(src({ a: 'no' }), 'a', true)).toBe(false);
    expect(readBoolean(src({}), 'a', true)).toBe(true);
    expect(inputError(() => readBoolean(src({ a: 'maybe' }), 'a', true)).message).toBe(
      "Input 'a': expected true or false (also yes/no), got 'maybe'.",
    );
  });

  it('lists split on newlines and commas, dropping blanks and comments', () => {
    expect(readList(src({ tags: 'a, b\n\n# note\nc' }), 'tags')).toEqual(['a', 'b', 'c']);
    expect(readList(src({}), 'tags')).toEqual([]);
  });

  it('integers check syntax and bounds', () => {
    expect(readInteger(src({ n: '4' }), 'n', 1)).toBe(4);
    expect(readInteger(src({}), 'n', 7)).toBe(7);
    expect(inputError(() => readInteger(src({ n: '4x' }), 'n', 1)).message).toBe(
      "Input 'n': expected a whole number, got '4x'.",
    );
    expect(inputError(() => readInteger(src({ n: '0' }), 'n', 1, { min: 1 })).message).toBe(
      "Input 'n': must be at least 1, got 0.",
    );
    expect(inputError(() => readInteger(src({ n: '65' }), 'n', 1, { max: 64 })).message).toBe(
      "Input 'n': must be at most 64, got 65.",
    );
  });

  it('enums are case-insensitive and list the choices', () => {
    expect(readEnum(src({ v: 'SHA256' }), 'v', ['size', 'sha256', 'none'] as const, 'size')).toBe('sha256');
    expect(readEnum(src({}), 'v', ['size', 'none'] as const, 'size')).toBe('size');
    expect(
      inputError(() => readEnum(src({ v: 'md5' }), 'v', ['size', 'none'] as const, 'size')).message,
    ).toBe("Input 'v': must be one of size, none; got 'md5'.");
  });

  it('durations', () => {
    expect(parseDuration('90m')).toBe(90 * 60_000);
    expect(parseDuration('1h30m')).toBe(90 * 60_000);
    expect(parseDuration('7d')).toBe(7 * 86_400_000);
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('1.5h')).toBe(5_400_000);
    expect(parseDuration('0')).toBe(0);
    for (const bad of ['', 'h', '10 parsecs', '5y', '1h x', '45']) expect(parseDuration(bad)).toBeUndefined();
    expect(readDuration(src({}), 'd', 1000)).toBe(1000);
    expect(inputError(() => readDuration(src({ d: 'soon' }), 'd')).message).toBe(
      "Input 'd': expected a duration like 90s, 30m, 1h or 7d; got 'soon'.",
    );
  });

  it('a bare number is not a duration: the message asks for a unit', () => {
    expect(inputError(() => readDuration(src({ 'grace-period': '2' }), 'grace-period')).message).toBe(
      "Input 'grace-period': '2' has no unit; write 2s, 2m, 2h or 2d.",
    );
    expect(readDuration(src({ 'grace-period': '0' }), 'grace-period')).toBe(0);
  });

  it('sizes', () => {
    expect(parseBytes('5MiB')).toBe(5 * 1024 * 1024);
    expect(parseBytes('512k')).toBe(512_000);
    expect(parseBytes('2GB')).toBe(2e9);
    expect(parseBytes('123')).toBe(123);
    expect(parseBytes('3 furlongs')).toBeUndefined();
    expect(readBytes(src({}), 's', 9)).toBe(9);
    expect(inputError(() => readBytes(src({ s: 'big' }), 's', 0)).message).toBe(
      "Input 's': expected a size like 5MiB, 512k or 2GB; got 'big'.",
    );
  });
});
