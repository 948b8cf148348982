/**
 * What main leaves for post, as one typed record. Post reads only this, and checks it: state is text from
 * another process. (Scratch dirs for exports are core/workspace's, shared by every action.)
 */
import type { Host } from '../../core/host.js';
import { State } from './constants.js';

export interface PushState {
  /** The private auth dir (auth-files.ts): saved before it is written, so post removes it however main ended. */
  authDir?: string;
}

export function saveRunState(host: Host, state: PushState): void {
  host.saveState(State.run, JSON.stringify(state));
}

/** The state main saved; what is missing or malformed counts as not saved. */
export function loadRunState(host: Host): PushState {
  const raw = host.getState(State.run);
  if (!raw) return {};
  let parsed: { authDir?: unknown };
  try {
    parsed = JSON.parse(raw) as typeof parsed;
  } catch {
    return {};
  }
  return typeof parsed.authDir === 'string' && parsed.authDir !== '' ? { authDir: parsed.authDir } : {};
}
