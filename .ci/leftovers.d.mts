// Types for leftovers.mjs (plain Node, used by .ci/test.mjs before any build), for the test of the check itself.
export declare const MARKER_ENV: string;
export declare function alive(pid: number): boolean;
export declare function mountsBelow(dir: string): string[];
export declare function processesOf(runDir: string, marker: string): Array<{ pid: number; command: string }>;
export declare function findLeftovers(run: { runDir: string; testTmp: string; marker: string }): string[];
export declare function removeRun(run: { runDir: string; marker: string }): void;
export declare function sweepDeadRuns(parent: string, prefix: string): void;
