/** A registry said no: carries the HTTP status and the OCI error code/message from the body, never credentials. */
export class RegistryError extends Error {
  constructor(
    message: string,
    readonly status?: number,
    readonly code?: string,
  ) {
    super(message);
    this.name = 'RegistryError';
  }
}

interface OciErrorBody {
  errors?: Array<{ code?: string; message?: string; detail?: unknown }>;
}

/** The first OCI error in a registry's JSON error body, if it has one. */
export function parseOciError(body: string): { code?: string; message?: string } {
  try {
    const parsed = JSON.parse(body) as OciErrorBody;
    const first = parsed.errors?.[0];
    if (first) return { code: first.code, message: first.message };
  } catch {
    // not JSON: the caller falls back to the status line
  }
  return {};
}
