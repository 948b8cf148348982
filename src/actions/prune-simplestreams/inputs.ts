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

export const VERIFY_MODES = ['size', 'sha256', 'none'] as const;
export type VerifyMode = (typeof VERIFY_MODES)[number];

export interface PruneInputs {
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
    path: readRequiredString(src, 'path'),
    keepVersions: readInteger(src, 'keep-versions', 3, { min: 1 }),
    maxAgeMs: readDuration(src, 'max-age'),
    gracePeriodMs: readDuration(src, 'grace-period', 3_600_000)!,
    products: readList(src, 'products'),
    keepBroken: readBoolean(src, 'keep-broken', false),
    dryRun: readBoolean(src, 'dry-run', false),
    reportFile: readString(src, 'report-file'),
    verify: readEnum(src, 'verify', VERIFY_MODES, 'size'),
    lockTimeoutMs: readDuration(src, 'lock-timeout', 300_000)!,
  };
}
