// Sealed contents (offload_contract/sealing.py): the user's own copy of a password mail travels
// encrypted; the Worker's sender opens it right before sending, with the SEAL_KEYSETS secret
// ({"current": "s1", "keysets": {"s1": "<base64url root>"}}). AES-256-GCM under
// HKDF(root, salt, "seal-key:v1:company:<id>"); the associated data binds key id, job and content id.
// Errors carry a stable code and never plaintext or key material.

import { KDF_SALT, base64ToBytes, hkdfSha256, parseKeyId } from "./signing.js";

const SCHEME = "MRCO-SEAL-1";
const encoder = new TextEncoder();

export class SealError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "SealError";
    this.code = code;
  }
}

/** The rendered content inside `sealed`, for the batch's company, job and content id. */
export async function openContent(roots, companyId, jobId, contentId, sealed) {
  let parsed;
  try {
    parsed = parseKeyId(String(sealed.key_id));
  } catch {
    throw new SealError("seal_invalid", "the sealed content names no valid key id");
  }
  if (parsed.company !== String(companyId)) {
    throw new SealError("seal_company_mismatch", "the sealed content belongs to another company");
  }
  const root = roots?.get(parsed.keyset);
  if (root === undefined) {
    throw new SealError("seal_key_unavailable", "the seal key set named by the content is not configured");
  }
  let plaintext;
  try {
    const keyBytes = await hkdfSha256(root, KDF_SALT, `seal-key:v1:company:${parsed.company}`, 32);
    const key = await crypto.subtle.importKey("raw", keyBytes, "AES-GCM", false, ["decrypt"]);
    const aad = encoder.encode([SCHEME, String(sealed.key_id), String(jobId), String(contentId)].join("\n"));
    plaintext = await crypto.subtle.decrypt(
      { name: "AES-GCM", iv: base64ToBytes(String(sealed.nonce)), additionalData: aad },
      key,
      base64ToBytes(String(sealed.ciphertext)),
    );
  } catch {
    throw new SealError("seal_invalid", "the sealed content does not open (tampered or moved)");
  }
  let content;
  try {
    content = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(plaintext));
  } catch {
    throw new SealError("seal_invalid", "the sealed content is not UTF-8 JSON");
  }
  if (!content || typeof content !== "object" || content.kind !== "rendered") {
    throw new SealError("seal_invalid", "a sealed content must hold a rendered content");
  }
  return content;
}
