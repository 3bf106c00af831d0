// The HMAC_KEYSETS Worker secret: {"current": "<keyset>", "keysets": {"<keyset>": "<base64url root>"}},
// the same shape as the AWS side's Secrets Manager secret (docs/callback-auth.md).

import { decodeRootSecret } from "./signing.js";

const KEYSET = /^[a-z0-9-]{1,16}$/;

/** The secret is misconfigured. The message never contains secret material. */
export class KeysetConfigError extends Error {
  constructor(detail) {
    super(`HMAC_KEYSETS is misconfigured: ${detail}`);
    this.name = "KeysetConfigError";
  }
}

/** Parse and check the secret; returns {current, roots: Map<keyset, Uint8Array>}. */
export function parseKeysets(text) {
  if (typeof text !== "string" || text.trim() === "") throw new KeysetConfigError("the secret is not set");
  let document;
  try {
    document = JSON.parse(text);
  } catch {
    throw new KeysetConfigError("the secret is not JSON");
  }
  const keysets = document?.keysets;
  if (!keysets || typeof keysets !== "object" || Array.isArray(keysets) || Object.keys(keysets).length === 0) {
    throw new KeysetConfigError('"keysets" must map key set names to root secrets');
  }
  const roots = new Map();
  for (const [name, secret] of Object.entries(keysets)) {
    if (!KEYSET.test(name)) throw new KeysetConfigError("key set names are 1-16 characters of a-z, 0-9 and '-'");
    if (typeof secret !== "string") throw new KeysetConfigError(`the root of key set ${name} must be a string`);
    try {
      roots.set(name, decodeRootSecret(secret));
    } catch {
      throw new KeysetConfigError(`the root of key set ${name} must be base64url of at least 32 bytes`);
    }
  }
  const current = document.current;
  if (typeof current !== "string" || !roots.has(current)) {
    throw new KeysetConfigError('"current" must name one of the configured key sets');
  }
  return { current, roots };
}
