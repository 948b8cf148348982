/**
 * A registry client speaking the OCI distribution API: the operations of the pull side (pull.ts, download.ts)
 * and of the push side (upload.ts) over one transport per registry (transport.ts: auth, tokens, the one
 * retry policy, timeouts). Every digest is verified.
 */
import { downloadBlob, type DownloadOptions } from './download.js';
import { findManifest, getManifest, getReferrers, headBlob, headManifest } from './pull.js';
import { RegistryTransport, type TransportOptions, type TransportStats } from './transport.js';
import { mountBlob, putManifest, uploadBlob, type BlobFile, type UploadOptions } from './upload.js';

export type RegistryClientOptions = TransportOptions;
export type ClientStats = TransportStats;
export type { BlobFile, DownloadOptions, UploadOptions };
export { TransientError } from './retry.js';

export class RegistryClient {
  readonly transport: RegistryTransport;

  constructor(options: RegistryClientOptions) {
    this.transport = new RegistryTransport(options);
  }

  get registry(): string {
    return this.transport.registry;
  }

  get stats(): ClientStats {
    return this.transport.stats;
  }

  /** Closes the connections this client opened. */
  close(): Promise<void> {
    return this.transport.close();
  }

  headManifest(...args: DropFirst<Parameters<typeof headManifest>>): ReturnType<typeof headManifest> {
    return headManifest(this.transport, ...args);
  }

  getManifest(...args: DropFirst<Parameters<typeof getManifest>>): ReturnType<typeof getManifest> {
    return getManifest(this.transport, ...args);
  }

  findManifest(...args: DropFirst<Parameters<typeof findManifest>>): ReturnType<typeof findManifest> {
    return findManifest(this.transport, ...args);
  }

  getReferrers(...args: DropFirst<Parameters<typeof getReferrers>>): ReturnType<typeof getReferrers> {
    return getReferrers(this.transport, ...args);
  }

  headBlob(...args: DropFirst<Parameters<typeof headBlob>>): ReturnType<typeof headBlob> {
    return headBlob(this.transport, ...args);
  }

  downloadBlob(...args: DropFirst<Parameters<typeof downloadBlob>>): ReturnType<typeof downloadBlob> {
    return downloadBlob(this.transport, ...args);
  }

  mountBlob(...args: DropFirst<Parameters<typeof mountBlob>>): ReturnType<typeof mountBlob> {
    return mountBlob(this.transport, ...args);
  }

  uploadBlob(...args: DropFirst<Parameters<typeof uploadBlob>>): ReturnType<typeof uploadBlob> {
    return uploadBlob(this.transport, ...args);
  }

  putManifest(...args: DropFirst<Parameters<typeof putManifest>>): ReturnType<typeof putManifest> {
    return putManifest(this.transport, ...args);
  }
}

type DropFirst<T extends unknown[]> = T extends [unknown, ...infer Rest] ? Rest : never;
