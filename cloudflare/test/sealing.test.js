import { describe, expect, it } from "vitest";
import vectors from "../../offload_contract/vectors/signing.json";
import { resolveContents } from "../src/contents.js";
import { SealError, openContent } from "../src/sealing.js";
import { decodeRootSecret } from "../src/signing.js";

const v = vectors.sealing;
const roots = new Map([[v.keyset, decodeRootSecret(v.root_secret_b64url)]]);

async function codeOf(promise) {
  try {
    await promise;
  } catch (error) {
    if (error instanceof SealError) return error.code;
    throw error;
  }
  return null;
}

describe("sealed contents (password mail) in the Worker", () => {
  it("opens the content Python sealed, byte for byte", async () => {
    expect(await openContent(roots, v.company_id, v.job_id, v.content_id, v.sealed)).toEqual(v.content);
  });

  it("refuses another company, job or content id, a tampered ciphertext and a missing key set", async () => {
    expect(await codeOf(openContent(roots, 8, v.job_id, v.content_id, v.sealed))).toBe("seal_company_mismatch");
    expect(await codeOf(openContent(roots, v.company_id, "j-8", v.content_id, v.sealed))).toBe("seal_invalid");
    expect(await codeOf(openContent(roots, v.company_id, v.job_id, "e-2", v.sealed))).toBe("seal_invalid");
    const flipped = v.sealed.ciphertext.slice(0, -2) + (v.sealed.ciphertext.endsWith("AA") ? "BB" : "AA");
    const tampered = { ...v.sealed, ciphertext: flipped };
    expect(await codeOf(openContent(roots, v.company_id, v.job_id, v.content_id, tampered))).toBe("seal_invalid");
    expect(await codeOf(openContent(null, v.company_id, v.job_id, v.content_id, v.sealed))).toBe(
      "seal_key_unavailable",
    );
  });

  it("resolves a batch's sealed content for sending, and fails it without the key, never showing it", async () => {
    const batch = { company_id: v.company_id, job_id: v.job_id, contents: { [v.content_id]: v.sealed } };
    const opened = await resolveContents(batch, null, roots);
    expect(opened[v.content_id].content.html).toBe(v.content.html);
    const closed = await resolveContents(batch, null, null);
    expect(closed[v.content_id].error.code).toBe("seal_key_unavailable");
    expect(String(closed[v.content_id].error.message)).not.toContain("Xq7#mP2v");
  });
});
