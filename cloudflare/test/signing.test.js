// The signing spec (docs/callback-auth.md) checked inside workerd against the shared
// vectors, byte for byte, with the same error codes as offload_contract/signing.py.
import { describe, expect, it } from "vitest";
import vectors from "../../offload_contract/vectors/signing.json";
import {
  HEADER_CONTENT_SHA256,
  HEADER_KEY_ID,
  HEADER_NONCE,
  HEADER_SIGNATURE,
  HEADER_TIMESTAMP,
  KDF_SALT,
  MemoryNonceStore,
  SCHEME,
  SignatureError,
  KEY_CACHE_SIZE,
  Verifier,
  base64ToBytes,
  bytesToHex,
  canonicalString,
  decodeRootSecret,
  deriveCompanyKey,
  generateRootSecret,
  hexToBytes,
  hkdfSha256,
  makeKeyId,
  newNonce,
  parseKeyId,
  sha256Hex,
  signRequest,
} from "../src/signing.js";

const CASES = vectors.cases;
const encoder = new TextEncoder();

function rootsOf(cases) {
  const roots = {};
  for (const c of cases) roots[c.keyset] = c.root_secret_b64url;
  return roots;
}

function verifierAt(now, store = new MemoryNonceStore(() => now)) {
  return new Verifier(rootsOf(CASES), store, { clock: () => now, windowSeconds: vectors.window_seconds });
}

function requestOf(c) {
  return {
    method: c.method,
    path: c.path,
    headers: {
      [HEADER_KEY_ID]: c.key_id,
      [HEADER_TIMESTAMP]: String(c.timestamp),
      [HEADER_NONCE]: c.nonce,
      [HEADER_CONTENT_SHA256]: c.body_sha256_hex,
      [HEADER_SIGNATURE]: c.signature_header,
    },
    body: base64ToBytes(c.body_b64),
  };
}

async function codeOf(promise) {
  try {
    await promise;
  } catch (error) {
    if (error instanceof SignatureError) return error.code;
    throw error;
  }
  return null;
}

describe("vector file", () => {
  it("is checked inside workerd, not Node", () => {
    expect(navigator.userAgent).toBe("Cloudflare-Workers");
  });

  it("names the same scheme, KDF and window as this implementation", () => {
    expect(vectors.scheme).toBe(SCHEME);
    expect(vectors.kdf.algorithm).toBe("HKDF-SHA256");
    expect(vectors.kdf.salt_utf8).toBe(KDF_SALT);
    expect(vectors.kdf.length).toBe(32);
    expect(vectors.window_seconds).toBe(300);
    expect(CASES.length).toBeGreaterThanOrEqual(4);
    expect(vectors.rejections.length).toBeGreaterThanOrEqual(8);
  });
});

describe.each(CASES.map((c) => [c.name, c]))("signing case: %s", (_name, c) => {
  it("derives the company key", async () => {
    const root = decodeRootSecret(c.root_secret_b64url);
    expect(bytesToHex(await deriveCompanyKey(root, c.company_id))).toBe(c.derived_key_hex);
  });

  it("formats and parses the key id", () => {
    expect(makeKeyId(c.keyset, c.company_id)).toBe(c.key_id);
    const parsed = parseKeyId(c.key_id);
    expect(parsed.keyset).toBe(c.keyset);
    expect(parsed.companyId).toBe(c.company_id);
    expect(parsed.company).toBe(String(c.company_id));
  });

  it("reads body_b64 as exactly the UTF-8 bytes of body_utf8, and hashes them", async () => {
    const body = base64ToBytes(c.body_b64);
    expect(bytesToHex(body)).toBe(bytesToHex(encoder.encode(c.body_utf8)));
    expect(await sha256Hex(body)).toBe(c.body_sha256_hex);
  });

  it("builds the canonical string", () => {
    expect(canonicalString(c.method, c.path, c.key_id, c.timestamp, c.nonce, c.body_sha256_hex)).toBe(
      c.canonical_string,
    );
  });

  it("signs to exactly the vector's five headers", async () => {
    const key = await deriveCompanyKey(decodeRootSecret(c.root_secret_b64url), c.company_id);
    const headers = await signRequest({
      key,
      keyId: c.key_id,
      method: c.method,
      path: c.path,
      body: base64ToBytes(c.body_b64),
      timestamp: c.timestamp,
      nonce: c.nonce,
    });
    expect(headers).toEqual(requestOf(c).headers);
  });

  it("verifies the vector's request", async () => {
    const { method, path, headers, body } = requestOf(c);
    const verified = await verifierAt(c.timestamp).verify(method, path, headers, body);
    expect(verified).toMatchObject({ keyId: c.key_id, keyset: c.keyset, companyId: c.company_id });
    expect(verified.timestamp).toBe(c.timestamp);
    expect(verified.nonce).toBe(c.nonce);
  });
});

describe.each(vectors.rejections.map((r) => [r.name, r]))("rejection vector: %s", (_name, r) => {
  it(`answers ${r.expect_error ?? "accepted"}`, async () => {
    const { method, path, headers, body: original } = requestOf(CASES[r.base_case]);
    let body = original;
    if ("body_append_utf8" in r.mutate) {
      const extra = encoder.encode(r.mutate.body_append_utf8);
      body = new Uint8Array([...original, ...extra]);
    }
    if ("key_id" in r.mutate) headers[HEADER_KEY_ID] = r.mutate.key_id;
    if (r.mutate.signature_upper) headers[HEADER_SIGNATURE] = "v1=" + headers[HEADER_SIGNATURE].slice(3).toUpperCase();
    let now = r.first_now ?? r.now;
    const verifier = new Verifier(rootsOf(CASES), new MemoryNonceStore(() => now), {
      clock: () => now,
      windowSeconds: vectors.window_seconds,
    });
    if (r.replay) {
      await verifier.verify(method, path, headers, body);
      now = r.now;
    }
    expect(await codeOf(verifier.verify(method, path, headers, body))).toBe(r.expect_error);
  });
});

describe("RFC 5869 test case 1", () => {
  it("derives the expected OKM through WebCrypto HKDF", async () => {
    const rfc = vectors.rfc5869_case1;
    const okm = await hkdfSha256(hexToBytes(rfc.ikm_hex), hexToBytes(rfc.salt_hex), hexToBytes(rfc.info_hex), rfc.length);
    expect(bytesToHex(okm)).toBe(rfc.okm_hex);
  });
});

describe("verification details", () => {
  const c = CASES[0];

  it("reads headers case-insensitively, from a plain object or a Headers object", async () => {
    const { method, path, headers, body } = requestOf(c);
    const lowered = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
    await verifierAt(c.timestamp).verify(method, path, lowered, body);
    await verifierAt(c.timestamp).verify(method, path, new Headers(headers), body);
  });

  it.each([HEADER_KEY_ID, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_CONTENT_SHA256, HEADER_SIGNATURE])(
    "names a missing %s",
    async (name) => {
      const { method, path, headers, body } = requestOf(c);
      delete headers[name];
      const error = await verifierAt(c.timestamp)
        .verify(method, path, headers, body)
        .catch((e) => e);
      expect(error).toBeInstanceOf(SignatureError);
      expect(error.code).toBe("missing_header");
      expect(error.message).toContain(name);
    },
  );

  it.each([
    [HEADER_KEY_ID, "k2026-c7"],
    [HEADER_KEY_ID, "K2026.c7"],
    [HEADER_KEY_ID, "k2026.c"],
    [HEADER_TIMESTAMP, "-1795361900"],
    [HEADER_TIMESTAMP, "1795361900.5"],
    [HEADER_NONCE, "short"],
    [HEADER_NONCE, "bm9uY2Utbm9uY2UtMDAwMQ=="],
    [HEADER_CONTENT_SHA256, "04186C9535634C4C959E1934EE7567E242DE27031CD30ED8DB283DC45B97B8BC"],
    [HEADER_SIGNATURE, "a1da7d8dc93c3f5fb06929ac4abb1bf337c4a9b8a6f20d07881658d8b2ef1182"],
    [HEADER_SIGNATURE, "v2=a1da7d8dc93c3f5fb06929ac4abb1bf337c4a9b8a6f20d07881658d8b2ef1182"],
  ])("rejects a malformed %s (%s)", async (name, value) => {
    const { method, path, headers, body } = requestOf(c);
    headers[name] = value;
    expect(await codeOf(verifierAt(c.timestamp).verify(method, path, headers, body))).toBe("malformed_header");
  });

  it("checks headers before the clock, and the clock before the key set", async () => {
    const { method, path, headers, body } = requestOf(c);
    const stale = c.timestamp + 10_000;
    expect(await codeOf(verifierAt(stale).verify(method, path, { ...headers, [HEADER_NONCE]: "x" }, body))).toBe(
      "malformed_header",
    );
    expect(await codeOf(verifierAt(stale).verify(method, path, { ...headers, [HEADER_KEY_ID]: "nope.c7" }, body))).toBe(
      "stale_timestamp",
    );
  });

  it("checks the key set before the body hash, and the body hash before the signature", async () => {
    const { method, path, headers } = requestOf(c);
    const tampered = encoder.encode("tampered");
    expect(
      await codeOf(verifierAt(c.timestamp).verify(method, path, { ...headers, [HEADER_KEY_ID]: "nope.c7" }, tampered)),
    ).toBe("unknown_key");
    const wrongSignature = "v1=" + "0".repeat(64);
    expect(
      await codeOf(
        verifierAt(c.timestamp).verify(method, path, { ...headers, [HEADER_SIGNATURE]: wrongSignature }, tampered),
      ),
    ).toBe("body_hash_mismatch");
  });

  it("binds the signature to method and path", async () => {
    const { method, path, headers, body } = requestOf(c);
    expect(await codeOf(verifierAt(c.timestamp).verify("PUT", path, headers, body))).toBe("bad_signature");
    expect(await codeOf(verifierAt(c.timestamp).verify(method, "/callbacks/v1/other", headers, body))).toBe(
      "bad_signature",
    );
    expect(await codeOf(verifierAt(c.timestamp).verify(method.toLowerCase(), path, headers, body))).toBeNull();
  });

  it("rejects a path that is not absolute printable ASCII", async () => {
    const { method, headers, body } = requestOf(c);
    expect(await codeOf(verifierAt(c.timestamp).verify(method, "callbacks/v1/results", headers, body))).toBe(
      "malformed_request",
    );
  });

  it("records the nonce only after a valid signature", async () => {
    const calls = [];
    const store = {
      async remember(keyId, nonce, expiresAt) {
        calls.push([keyId, nonce, expiresAt]);
        return true;
      },
    };
    const { method, path, headers, body } = requestOf(c);
    const forged = { ...headers, [HEADER_SIGNATURE]: "v1=" + "f".repeat(64) };
    expect(await codeOf(verifierAt(c.timestamp, store).verify(method, path, forged, body))).toBe("bad_signature");
    expect(calls).toEqual([]);
    await verifierAt(c.timestamp, store).verify(method, path, headers, body);
    expect(calls).toEqual([[c.key_id, c.nonce, c.timestamp + vectors.window_seconds + vectors.nonce_margin_seconds]]);
  });

  it("scopes nonces per key id and forgets them after twice the window", async () => {
    let now = CASES[1].timestamp;
    const store = new MemoryNonceStore(() => now);
    expect(await store.remember("k2026.c1", "n", now + 600)).toBe(true);
    expect(await store.remember("k2026.c1", "n", now + 600)).toBe(false);
    expect(await store.remember("k2026.c2", "n", now + 600)).toBe(true);
    now += 601;
    expect(await store.remember("k2026.c1", "n", now + 600)).toBe(true);
  });

  it("round-trips a fresh signature with a random nonce and the current time", async () => {
    const root = decodeRootSecret(generateRootSecret());
    const key = await deriveCompanyKey(root, 99);
    const body = encoder.encode('{"hello":"عالم"}');
    const headers = await signRequest({ key, keyId: "live.c99", method: "POST", path: "/v1/batches", body });
    expect(headers[HEADER_NONCE]).toMatch(/^[A-Za-z0-9_-]{24}$/);
    const verifier = new Verifier({ live: root }, new MemoryNonceStore());
    expect((await verifier.verify("POST", "/v1/batches", headers, body)).companyId).toBe(99);
    expect(newNonce()).not.toBe(newNonce());
  });

  it("keeps the derived-key cache bounded (LRU); unknown key sets never enter it", async () => {
    const root = decodeRootSecret(CASES[0].root_secret_b64url);
    const verifier = new Verifier({ k1: root }, new MemoryNonceStore());
    for (let company = 0; company < KEY_CACHE_SIZE + 50; company++) await verifier.keyFor(`k1.c${company}`);
    expect(verifier.keyCache.size).toBe(KEY_CACHE_SIZE);
    for (let company = 0; company < 50; company++) {
      expect(await codeOf(verifier.keyFor(`nope.c${company}`))).toBe("unknown_key");
    }
    expect(verifier.keyCache.size).toBe(KEY_CACHE_SIZE);
    expect(verifier.keyCache.has("k1.c0")).toBe(false); // the oldest went first
  });

  it("refuses short or invalid root secrets, and bad key set names", () => {
    expect(() => decodeRootSecret("c2hvcnQ")).toThrow(/at least 32 bytes/);
    expect(() => decodeRootSecret("not base64url!")).toThrow(/base64url/);
    // Standard base64 of the same bytes is accepted, as Python's urlsafe_b64decode does.
    const allOnes = "ff".repeat(33);
    expect(bytesToHex(decodeRootSecret("_".repeat(44)))).toBe(allOnes);
    expect(bytesToHex(decodeRootSecret("/".repeat(44)))).toBe(allOnes);
    expect(() => makeKeyId("Upper", 1)).toThrow(/key set names/);
    expect(() => new Verifier({ "bad name": new Uint8Array(32) }, new MemoryNonceStore())).toThrow(/key set names/);
  });

  it("keeps a company id beyond 2^53 exact in the key derivation", async () => {
    const parsed = parseKeyId("k2026.c9007199254740993");
    expect(parsed.company).toBe("9007199254740993");
    expect(parsed.companyId).toBeNull();
    const root = decodeRootSecret(CASES[0].root_secret_b64url);
    const viaText = await deriveCompanyKey(root, parsed.company);
    const viaBigInt = await deriveCompanyKey(root, 9007199254740993n);
    expect(bytesToHex(viaText)).toBe(bytesToHex(viaBigInt));
    // Computed by offload_contract.signing.derive_company_key(root, 9007199254740993).
    expect(bytesToHex(viaText)).toBe("cc127804c983b1cb291c40c86836b848a9341ca73b628fa0a30dc5c565469e0c");
    expect(parseKeyId("k2026.c007").company).toBe("7");
  });
});
