/** What the registry transport authenticates with; where it comes from (auth files, helpers, inputs) is the caller's. */
export interface Credential {
  username: string;
  password: string;
  /**
   * An OAuth2 refresh token (docker's `identitytoken`), exchanged with the registry's token server for access
   * tokens; username and password are then only descriptive.
   */
  identityToken?: string;
}

/** `base64(user:password)`: the `auth` of an auth file, and the value of an `Authorization: Basic` header. */
export function encodeAuth(c: Credential): string {
  return Buffer.from(`${c.username}:${c.password}`, 'utf8').toString('base64');
}
