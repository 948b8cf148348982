import {
  readBoolean,
  readDuration,
  readEnum,
  readInteger,
  readList,
  readRequiredString,
  readString,
  type InputSource,
} from '../../core/inputs.js';
import { Inputs } from './constants.js';

export const VERIFY_MODES = ['size', 'sha256', 'none'] as const;
export type VerifyMode = (typeof VERIFY_MODES)[number];

export interface PruneInputs {
  /** As given; prune.ts opens it (a path that names no directory is found there, as an InputError). */
  path: string;
  keepVersions: number;
  maxAgeMs?: number;
  gracePeriodMs: number;
  products: string[];
  keepBroken: boolean;
  dryRun: boolean;
  reportFile?: string;
  verify: VerifyMode;
  lockTimeoutMs: number;
}

export function readInputs(src: InputSource): PruneInputs {
  return {
    path: readRequiredString(src, Inputs.path),
    keepVersions: readInteger(src, Inputs.keepVersions, 3, { min: 1 }),
    maxAgeMs: readDuration(src, Inputs.maxAge),
    gracePeriodMs: readDuration(src, Inputs.gracePeriod, 3_600_000),
    products: readList(src, Inputs.products),
    keepBroken: readBoolean(src, Inputs.keepBroken, false),
    dryRun: readBoolean(src, Inputs.dryRun, false),
    reportFile: readString(src, Inputs.reportFile),
    verify: readEnum(src, Inputs.verify, VERIFY_MODES, 'size'),
    lockTimeoutMs: readDuration(src, Inputs.lockTimeout, 300_000),
  };
}
