/**
 * Registry operations of the push side: cross-repository mount, blob upload (one PUT, or PATCH chunks then a
 * PUT) and manifest PUT (with the OCI 1.1 `?tag=` parameters when asked).
 *
 * An upload that fails part-way keeps its session when the registry does: after a dropped connection, a 5xx or
 * a token that died early, the registry is asked where the session stands (GET on the upload URL answers
 * `Range: 0-<last byte>`) and the upload goes on from there; only a lost session starts over. Every restart
 * draws from the upload's one retry budget.
 */
import { stat } from 'node:fs/promises';
import type { Hash } from 'node:crypto';
import { fileChunks } from '../files.js';
import { errorMessage } from '../run.js';
import { DigestMismatchError, digestOf, hashDigest, hashFile, newHash, verifyDigest } from './digest.js';
import { RegistryError } from './errors.js';
import { MANIFEST_MEDIA_TYPES } from './media-types.js';
import { headBlob, headManifest } from './pull.js';
import { isValidDigest } from './reference.js';
import { externalText, type RegistryResponse } from './response.js';
import { TransientError, type RetryBudget } from './retry.js';
import { pullScope, pushScope } from './token.js';
import type { RegistryTransport, RequestSpec } from './transport.js';

export interface BlobFile {
  digest: string;
  size: number;
  path: string;
}

export interface UploadOptions {
  /** 0 (or a size >= the blob) uploads in one PUT; otherwise PATCH chunks of this many bytes. */
  chunkSize?: number;
  /** An upload session the registry already opened (a mount answered 202). */
  location?: URL;
  /** The blob's retry budget when a mount tried first: storing one blob is one operation. */
  budget?: RetryBudget;
}

/**
 * Asks the registry to link a blob from another repository it holds. `mounted: false` with a location means
 * the registry opened a normal upload session instead (202); any failure means "upload it normally" — a 401 or
 * 403 too (no pull right on the source repository, as the distribution spec and containers/image treat it):
 * the upload that follows asks for the push right alone and reports a real refusal itself. Only a registry that
 * failed every try of `budget` (shared with the upload that would follow) ends the blob's operation here, unless
 * it left the last try unanswered in time (slow, not refusing): the upload then gets one try.
 */
export async function mountBlob(
  transport: RegistryTransport,
  repository: string,
  digest: string,
  fromRepository: string,
  budget: RetryBudget = transport.budget(),
): Promise<{ mounted: true } | { mounted: false; location?: URL; refused?: boolean }> {
  const url = transport.url(`${repository}/blobs/uploads/`);
  url.searchParams.set('mount', digest);
  url.searchParams.set('from', fromRepository);
  try {
    const response = await transport.send(
      {
        method: 'POST',
        url,
        scopes: [pushScope(repository), pullScope(fromRepository)],
        headers: { 'content-length': '0' },
        ok: [201, 202],
        what: `mount blob ${digest} from ${fromRepository} into ${repository}`,
      },
      budget,
    );
    await response.drain();
    if (response.status === 201) return { mounted: true };
    return { mounted: false, location: location(transport, response) };
  } catch (error) {
    if (error instanceof TransientError && error.exhausted) {
      // Every answer lost: the mount may have been made all the same.
      if (budget.spent && (await blobArrived(transport, repository, digest, error, 'mounted'))) {
        return { mounted: true };
      }
      // Not answered in time, not refused: a registry slow to mount (docker and skopeo wait for it) may as well
      // have declined (202). The upload gets the budget's last try: one request's wait more if it is wedged.
      if (budget.spent && error.unanswered) return { mounted: false };
      throw error;
    }
    // A refusal of the pull right on the source holds for every blob of it (Harbor answers 401 so).
    const refused = error instanceof RegistryError && (error.status === 401 || error.status === 403);
    return { mounted: false, refused };
  }
}

/** Where an upload stands: the session URL and the bytes the registry holds, hashed. */
interface Position {
  session: URL;
  offset: number;
  /** Hash of the blob's bytes [0, offset). */
  hash: Hash;
}

export async function uploadBlob(
  transport: RegistryTransport,
  repository: string,
  blob: BlobFile,
  options: UploadOptions = {},
): Promise<void> {
  const what = `upload blob ${blob.digest} to ${repository}`;
  const budget = options.budget ?? transport.budget();
  const chunkSize = options.chunkSize && options.chunkSize < blob.size ? options.chunkSize : 0;
  let at: Position = options.location
    ? { session: options.location, offset: 0, hash: newHash(blob.digest) }
    : await newSession(transport, repository, blob, budget);
  for (;;) {
    let closing = false;
    try {
      while (chunkSize > 0 && at.offset < blob.size) {
        const end = Math.min(blob.size, at.offset + chunkSize);
        at = await sendChunk(transport, budget, { repository, blob, what }, at, end);
      }
      closing = true;
      await finish(transport, budget, { repository, blob, what }, at);
      transport.stats.bytesUploaded += blob.size;
      return;
    } catch (error) {
      if (isLostSession(error)) {
        // A closing PUT retried after its answer was lost (one without a body is retried as it is) finds the
        // session closed when the lost try completed the blob: starting over would send all of it again.
        if (
          closing &&
          (await blobArrived(transport, repository, blob.digest, error, 'not sent again', blob.size))
        ) {
          transport.stats.bytesUploaded += blob.size;
          return;
        }
        await budget.next(new TransientError(error.message, error.status));
        at = await newSession(transport, repository, blob, budget);
        continue;
      }
      if (!(error instanceof TransientError)) throw error;
      // A blob file that changed size fails every try alike (a body shorter than its length): no retry.
      await sameSize(blob);
      const spent = await budget.next(error).then(
        () => undefined,
        (exhausted: unknown) => exhausted,
      );
      if (
        closing &&
        (await blobArrived(transport, repository, blob.digest, error, 'not sent again', blob.size))
      ) {
        transport.stats.bytesUploaded += blob.size;
        return;
      }
      if (spent) throw spent;
      at = await resumePosition(transport, repository, blob, at, budget);
    }
  }
}

/**
 * After a closing PUT or a mount that got no usable answer: the registry may have done it all the same (a
 * blob verified and moved after we stopped waiting, an answer cut or replaced by a gateway's 5xx; the
 * session is then gone, and a resume would upload it all again). The blob as the registry now holds it answers
 * that, told in one log line; one HEAD, and when that fails too, the resume (or the failure) goes on as it
 * would have.
 */
async function blobArrived(
  transport: RegistryTransport,
  repository: string,
  digest: string,
  failure: RegistryError,
  outcome: string,
  size?: number,
): Promise<boolean> {
  try {
    const there = await headBlob(transport, repository, digest, transport.budget(0));
    if (!there || (size !== undefined && there.size !== size)) return false;
  } catch {
    return false;
  }
  transport.onLostAnswer?.(`${failure.message}; but ${repository} has ${digest} now (HEAD): ${outcome}.`);
  return true;
}

async function newSession(
  transport: RegistryTransport,
  repository: string,
  blob: BlobFile,
  budget: RetryBudget,
): Promise<Position> {
  const response = await transport.send(
    {
      method: 'POST',
      url: transport.url(`${repository}/blobs/uploads/`),
      scopes: [pushScope(repository)],
      headers: { 'content-length': '0' },
      ok: [202],
      what: `start upload to ${repository}`,
    },
    budget,
  );
  await response.drain();
  return { session: location(transport, response), offset: 0, hash: newHash(blob.digest) };
}

interface Upload {
  repository: string;
  blob: BlobFile;
  what: string;
}

async function sendChunk(
  transport: RegistryTransport,
  budget: RetryBudget,
  { repository, blob, what }: Upload,
  at: Position,
  end: number,
): Promise<Position> {
  const hash = at.hash.copy();
  const response = await sendRange(
    transport,
    budget,
    {
      method: 'PATCH',
      url: at.session,
      scopes: [pushScope(repository)],
      headers: {
        'content-type': 'application/octet-stream',
        'content-range': `${at.offset}-${end - 1}`,
        'content-length': String(end - at.offset),
      },
      // ECR answers a chunk 201 (the spec's 202 says the same here: the session goes on to its closing PUT).
      ok: [202, 201],
      what,
      streaming: true,
      commitBytes: end - at.offset,
    },
    fileRange(blob.path, at.offset, end, hash),
  );
  return { session: location(transport, response), offset: end, hash };
}

/** The closing PUT, carrying whatever the chunks did not (all of it for a one-request upload). */
async function finish(
  transport: RegistryTransport,
  budget: RetryBudget,
  { repository, blob, what }: Upload,
  at: Position,
): Promise<void> {
  const hash = at.hash.copy();
  const url = new URL(at.session);
  url.searchParams.set('digest', blob.digest);
  const length = blob.size - at.offset;
  const response = await sendRange(
    transport,
    budget,
    {
      method: 'PUT',
      url,
      scopes: [pushScope(repository)],
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(length) },
      ok: [201, 204],
      what,
      streaming: true,
      // The registry verifies and moves the whole blob before it answers, whatever this request carried.
      commitBytes: blob.size,
    },
    length > 0 ? fileRange(blob.path, at.offset, blob.size, hash) : undefined,
  );
  const actual = hashDigest(hash, blob.digest);
  if (actual !== blob.digest) throw new DigestMismatchError(`local blob ${blob.path}`, blob.digest, actual);
  const stored = response.header('docker-content-digest');
  if (stored && stored !== blob.digest) throw new DigestMismatchError(what, blob.digest, stored);
}

/**
 * After a failed PATCH/PUT: the offset the registry holds for this session, so the upload goes on from there
 * (a token that died early costs one chunk, not the blob). A session the registry no longer knows (404, or
 * refused as inconsistent) is replaced by a new one from byte 0, and so is one whose registry will not tell
 * where it stands: registries that serve the rest of the upload protocol may lack the status GET (405, 501),
 * and starting over is what a client without resume does anyway.
 */
async function resumePosition(
  transport: RegistryTransport,
  repository: string,
  blob: BlobFile,
  at: Position,
  budget: RetryBudget,
): Promise<Position> {
  let response: RegistryResponse;
  try {
    response = await transport.send(
      {
        method: 'GET',
        url: at.session,
        scopes: [pushScope(repository)],
        ok: [204],
        what: `ask where the upload of ${blob.digest} to ${repository} stands`,
      },
      budget,
    );
  } catch (error) {
    if (!isLostSession(error) && !isUnanswerableStatus(error)) throw error;
    return newSession(transport, repository, blob, budget);
  }
  await response.drain();
  // `0-0` is what docker-registry says of an empty session (and of one byte, which no chunk size leaves).
  const m = /^(?:bytes=)?0-(\d+)$/.exec(response.header('range') ?? '');
  const offset = m && m[1] !== '0' ? Number(m[1]) + 1 : 0;
  const session = response.header('location') ? location(transport, response) : at.session;
  if (offset > blob.size)
    throw new RegistryError(`upload of ${blob.digest}: the registry holds more bytes than the blob has.`);
  if (offset === at.offset) return { ...at, session };
  // The registry kept part of the failed request (or less than we thought): hash up to its offset.
  const from = offset > at.offset ? at.offset : 0;
  const hash = from === 0 ? newHash(blob.digest) : at.hash.copy();
  await hashFile(hash, blob.path, from, offset);
  return { session, offset, hash };
}

/**
 * The registry no longer knows the session: 404 BLOB_UPLOAD_UNKNOWN (expired), or BLOB_UPLOAD_INVALID after a
 * broken request left it inconsistent (docker-registry cancels such a session).
 */
function isLostSession(error: unknown): error is RegistryError {
  return (
    error instanceof RegistryError &&
    !(error instanceof TransientError) &&
    (error.status === 404 || error.code === 'BLOB_UPLOAD_INVALID' || error.code === 'BLOB_UPLOAD_UNKNOWN')
  );
}

/**
 * A status GET refused as a request the registry does not serve: the upload cannot resume there. Auth
 * refusals and retried failures are not that: they hold for a new session as well, and are reported as they
 * are.
 */
function isUnanswerableStatus(error: unknown): boolean {
  return (
    error instanceof RegistryError &&
    !(error instanceof TransientError) &&
    (error.status === 400 || error.status === 405 || error.status === 501)
  );
}

async function sameSize(blob: BlobFile): Promise<void> {
  const { size } = await stat(blob.path);
  if (size !== blob.size) {
    throw new Error(
      `local blob ${blob.path} is ${size} bytes now, not ${blob.size}: it changed during the upload.`,
    );
  }
}

/**
 * One try of an upload request with `body`, its answer read whole. The body is ended here, whatever became of
 * the request: undici drops an iterable body where it stands when the connection closes without an error (an
 * answer that ends with the connection, to a request it never read, then a reset), and the file stayed open.
 */
async function sendRange(
  transport: RegistryTransport,
  budget: RetryBudget,
  spec: Omit<RequestSpec, 'body'>,
  body: AsyncGenerator<Buffer, void> | undefined,
): Promise<RegistryResponse> {
  try {
    const response = await transport.send({ ...spec, body: body && (() => body) }, budget);
    await response.drain();
    return response;
  } finally {
    await body?.return(undefined);
  }
}

/** The body of an upload: the file's bytes, hashed as they go out (the upload verifies what it sent). */
async function* fileRange(
  path: string,
  start: number,
  end: number,
  hash: Hash,
): AsyncGenerator<Buffer, void> {
  for await (const chunk of fileChunks(path, start, end)) {
    hash.update(chunk);
    yield chunk;
  }
}

/**
 * PUTs manifest bytes exactly as given. With `tags`, asks for the OCI 1.1 multi-tag PUT (`?tag=a&tag=b`);
 * `confirmedTags` lists only the tags the registry confirmed with OCI-Tag headers (one comma-joined header or
 * one header per tag); a registry that ignores the query confirms none. `subject` is the OCI-Subject header,
 * by which a registry with the referrers API says it indexed the manifest's `subject`.
 */
export async function putManifest(
  transport: RegistryTransport,
  repository: string,
  reference: string,
  bytes: Buffer,
  mediaType: string,
  tags: readonly string[] = [],
  budget: RetryBudget = transport.budget(),
): Promise<{ digest: string; confirmedTags: string[]; subject?: string }> {
  const digest = digestOf(bytes);
  if (isValidDigest(reference)) verifyDigest(`manifest for ${repository}`, bytes, reference);
  const url = transport.url(`${repository}/manifests/${reference}`);
  for (const tag of tags) url.searchParams.append('tag', tag);
  const what = `PUT manifest ${repository}:${reference}`;
  let response: RegistryResponse;
  try {
    response = await transport.send(
      {
        method: 'PUT',
        url,
        scopes: [pushScope(repository)],
        headers: { 'content-type': mediaType, 'content-length': String(bytes.length) },
        body: bytes,
        ok: [201, 200, 204],
        what,
        commitBytes: bytes.length,
      },
      budget,
    );
  } catch (error) {
    // A multi-tag PUT's tags are settled by its caller, who knows whether per-tag PUTs went beside it
    // (settleTagsByHead).
    if (!answerMayBeLost(error, budget) || tags.length > 0) throw error;
    await settleByHead(transport, repository, reference, digest, error);
    return { digest, confirmedTags: [] };
  }
  await response.drain();
  const stored = response.header('docker-content-digest');
  if (stored && stored !== digest) throw new DigestMismatchError(what, digest, stored);
  return {
    digest,
    confirmedTags: confirmedTags(response.headerList('oci-tag'), tags),
    subject: response.header('oci-subject'),
  };
}

/**
 * Whether a write failed in a way that leaves it open whether the registry applied it: no usable answer on any
 * of its tries (the connection cut after the registry took it, a gateway's 502/504, no answer in time), or a
 * refusal on a retry after such a try: a registry with immutable tags (Harbor, Artifactory, Quay) refuses to
 * write a tag again that the lost try set. The write's own budget tells: a token fetch that failed on its own
 * budget says nothing of the write.
 */
export function answerMayBeLost(error: unknown, budget: RetryBudget): error is RegistryError {
  if (!(error instanceof RegistryError)) return false;
  if (error instanceof TransientError) return budget.spent;
  return error.status !== undefined && budget.retried > 0;
}

/**
 * A manifest PUT whose answer may have been lost (answerMayBeLost) may well have been applied. One HEAD
 * decides: the reference naming exactly this digest now counts as done (told in one log line); anything else
 * (another digest, nothing, no answer to the HEAD either) is the PUT's failure as it was, with what the HEAD
 * found added. The HEAD has the retry policy's tries: a 503 or a cut on its one try would report a write that
 * was done as failed.
 */
async function settleByHead(
  transport: RegistryTransport,
  repository: string,
  reference: string,
  digest: string,
  failure: RegistryError,
): Promise<void> {
  let found: string;
  let overtaken: string | undefined;
  try {
    const there = await headManifest(transport, repository, reference, MANIFEST_MEDIA_TYPES);
    if (there?.digest === digest) {
      transport.onLostAnswer?.(
        `${failure.message}; but ${repository}:${reference} is ${digest} now (HEAD): counted as done.`,
      );
      return;
    }
    found = there ? `it is ${there.digest} there, not ${digest}` : 'the registry has nothing under it';
    overtaken = there?.digest;
  } catch (error) {
    found = `the HEAD failed too (${errorMessage(error)})`;
  }
  const message = `${failure.message}; a HEAD after it: ${found}.`;
  const told =
    failure instanceof TransientError
      ? Object.assign(new TransientError(message, failure.status), { exhausted: true })
      : new RegistryError(message, failure.status, failure.code);
  if (overtaken) overtakenWrites.set(told, overtaken);
  throw told;
}

/** Writes whose answer was lost while the HEAD after them found another digest under the reference. */
const overtakenWrites = new WeakMap<Error, string>();

/**
 * The digest another writer put under the reference of a manifest PUT whose answer was lost (the HEAD after
 * it found that one instead), or undefined for any other failure. A caller that merges with what is there (the
 * referrers tag schema) reads it back and goes on; for others it stays the PUT's failure.
 */
export function overtakenAfterLostAnswer(error: unknown): string | undefined {
  return error instanceof Error ? overtakenWrites.get(error) : undefined;
}

/**
 * The tags of a multi-tag PUT whose answer may have been lost (answerMayBeLost) that name `digest` now: one HEAD
 * each, all at once (one round trip; a HEAD of the digest cannot say which tags the PUT set). Those count as
 * done, told in one log line; the others (another digest, nothing, no answer to the HEAD) are left to their own
 * PUTs. Each HEAD has the retry policy's tries: a tag whose HEAD got a 429/5xx or a cut on a single try went to
 * its own PUT, which a registry with immutable tags refuses for a tag the batch set.
 */
export async function settleTagsByHead(
  transport: RegistryTransport,
  repository: string,
  tags: readonly string[],
  digest: string,
  failure: RegistryError,
  /** Tries after the first for each HEAD; the retry policy's when undefined. */
  retries?: number,
): Promise<string[]> {
  const found = await Promise.all(
    tags.map((tag) =>
      headManifest(transport, repository, tag, MANIFEST_MEDIA_TYPES, transport.budget(retries)).then(
        (there) => there?.digest === digest,
        () => false,
      ),
    ),
  );
  const settled = tags.filter((_, i) => found[i]);
  if (settled.length > 0) {
    const are = settled.length === 1 ? 'is' : 'are';
    transport.onLostAnswer?.(
      `${failure.message}; but ${repository}:${settled.join(', ')} ${are} ${digest} now (HEAD): counted as done.`,
    );
  }
  return settled;
}

/**
 * HEADs again of a refused tag, each after the retry policy's next wait (under 2 s), one try each: only the first
 * HEAD has the policy's tries, else a registry answering them 503 with Retry-After would hold the refusal for
 * four operations' budgets.
 */
const LAGGING_HEADS = 3;

/**
 * Whether a tag that a multi-tag PUT may have set unseen (the probe beside the tag's own PUT, whose answer was
 * lost; a batch whose answer was lost, left to its own PUT by settleTagsByHead), and whose own PUT was refused
 * with a status (a registry with immutable tags refuses to write a tag that exists: 412, 409, 400, 403), names
 * `digest` after all. A HEAD, and when it does not, a few more with a short wait between: a registry whose
 * reads lag its writes (S3-backed, replicated) may answer from before the batch set the tag. Naming `digest`,
 * the tag counts as done (told in one log line); otherwise the refusal stands.
 */
export async function settleRefusedTag(
  transport: RegistryTransport,
  repository: string,
  tag: string,
  digest: string,
  refusal: unknown,
): Promise<boolean> {
  if (!(refusal instanceof RegistryError) || refusal instanceof TransientError || !refusal.status)
    return false;
  const waits = transport.budget(LAGGING_HEADS);
  for (let round = 0; ; round++) {
    const retries = round === 0 ? undefined : 0;
    if ((await settleTagsByHead(transport, repository, [tag], digest, refusal, retries)).length > 0)
      return true;
    const lag = new TransientError(`${repository}:${tag} is not ${digest} (yet)`);
    if (
      !(await waits.next(lag).then(
        () => true,
        () => false,
      ))
    )
      return false;
  }
}

export function confirmedTags(headers: readonly string[], asked: readonly string[]): string[] {
  const named = new Set(headers.flatMap((h) => h.split(',')).map((t) => t.trim()));
  return asked.filter((t) => named.has(t));
}

/**
 * Upload Location headers may be relative; resolve against the request URL and keep their query (state). A
 * Location from https to plain http is refused: the blob (and anything sent with it) would cross in clear text.
 * On the registry's own host and port it stays on https instead: a registry behind a proxy that ends TLS builds
 * its Locations from the plain-http request it got (distribution without X-Forwarded-Proto or `http.host`), and
 * the session it names is the one this https origin serves.
 */
function location(transport: RegistryTransport, response: RegistryResponse): URL {
  const value = response.header('location');
  if (!value) throw new RegistryError(`the registry answered ${response.status} without a Location header.`);
  const url = new URL(value, response.url);
  if (response.url.protocol === 'https:' && url.protocol !== 'https:') {
    if (url.protocol === 'http:' && transport.isRegistryUrl(url)) {
      url.protocol = 'https:';
      return url;
    }
    throw new RegistryError(
      `the registry at ${response.url.host} sent the upload to ${externalText(url.origin)}, leaving https; refused.`,
    );
  }
  return url;
}
