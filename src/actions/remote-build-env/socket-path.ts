/**
 * A unix socket path must fit the kernel's `sun_path` buffer including its terminating NUL: 108 bytes on Linux,
 * 104 on macOS and the BSDs. Go's net package (podman) refuses a path that fills the whole buffer, so the usable
 * length is one byte less. A path too long fails late and obscurely ("bind: invalid argument"), so check early.
 */
const SUN_PATH_BYTES: Partial<Record<NodeJS.Platform, number>> = {
  linux: 108,
  darwin: 104,
  freebsd: 104,
  openbsd: 104,
  netbsd: 104,
};

export function maxSocketPathBytes(platform: NodeJS.Platform): number {
  return (SUN_PATH_BYTES[platform] ?? 104) - 1;
}

/** A sentence saying why `path` cannot be a socket path on `platform`, or undefined when it fits. */
export function socketPathProblem(path: string, platform: NodeJS.Platform): string | undefined {
  const bytes = Buffer.byteLength(path, 'utf8');
  const max = maxSocketPathBytes(platform);
  if (bytes <= max) return undefined;
  return `the socket path '${path}' is ${bytes} bytes, but ${platform} allows at most ${max}`;
}
