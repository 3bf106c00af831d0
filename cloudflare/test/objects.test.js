// The signed object routes (src/objects.js) in workerd with Miniflare's R2: company scope,
// path tricks, signatures, size cap, and the round trip.
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import worker from "../src/index.js";
import { MAX_OBJECT_BYTES } from "../src/objects.js";
import { decodeRootSecret, deriveCompanyKey, sha256Hex, signRequest } from "../src/signing.js";
import { KEYSETS, ORIGIN, uniqueJob } from "./helpers.js";

const encoder = new TextEncoder();

/** A request signed over `signedPath` (the path the client believes it sends) for `url`. */
async function objectRequest(method, path, { body, company = 7, contentType, signedPath = path, timestamp } = {}) {
  const bytes = typeof body === "string" ? encoder.encode(body) : body ?? new Uint8Array(0);
  const key = await deriveCompanyKey(decodeRootSecret(KEYSETS.keysets.k2026), company);
  const signed = await signRequest({ key, keyId: `k2026.c${company}`, method, path: signedPath, body: bytes, timestamp });
  const headers = { ...signed, ...(contentType ? { "content-type": contentType } : {}) };
  return new Request(ORIGIN + path, { method, headers, body: method === "GET" ? undefined : bytes });
}

const call = async (request) => worker.fetch(request, env);

describe("PUT and GET /v1/objects/{key}", () => {
  it("round-trips the company's content: bytes, SHA-256 and content type", async () => {
    const key = `contents/company-7/${uniqueJob()}/e12.json`;
    const body = JSON.stringify({ kind: "rendered", subject: "Größe — تجربة", html: "<p>x</p>".repeat(500) });
    const put = await call(await objectRequest("PUT", `/v1/objects/${key}`, { body, contentType: "application/json" }));
    expect(put.status).toBe(200);
    const answer = await put.json();
    expect(answer).toEqual({ key, sha256: await sha256Hex(encoder.encode(body)), bytes: encoder.encode(body).byteLength, content_type: "application/json" });
    const stored = await env.OFFLOAD_BUCKET.get(key);
    expect(await stored.text()).toBe(body);
    expect(stored.httpMetadata.contentType).toBe("application/json");

    const got = await call(await objectRequest("GET", `/v1/objects/${key}`));
    expect(got.status).toBe(200);
    expect(got.headers.get("content-type")).toBe("application/json");
    expect(await got.text()).toBe(body);
  });

  it("writes templates with binary images and reads the company's certificates", async () => {
    const png = Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 255, 1, 254]);
    const put = await call(await objectRequest("PUT", "/v1/objects/templates/company-7/logo-x.png", { body: png, contentType: "image/png" }));
    expect(put.status).toBe(200);
    const got = await call(await objectRequest("GET", "/v1/objects/templates/company-7/logo-x.png"));
    expect(new Uint8Array(await got.arrayBuffer())).toEqual(png);
    expect(got.headers.get("content-type")).toBe("image/png");

    const pdfKey = `certificates/company-7/${uniqueJob()}/r-1.pdf`;
    await env.OFFLOAD_BUCKET.put(pdfKey, "%PDF-1.7 test", { httpMetadata: { contentType: "application/pdf" } });
    const pdf = await call(await objectRequest("GET", `/v1/objects/${pdfKey}`));
    expect(pdf.status).toBe(200);
    expect(new TextDecoder().decode(await pdf.arrayBuffer())).toBe("%PDF-1.7 test");
    // Certificates are the Worker's to write, never the bridge's.
    const overwrite = await call(await objectRequest("PUT", `/v1/objects/${pdfKey}`, { body: "forged", contentType: "application/pdf" }));
    expect(overwrite.status).toBe(403);
    expect(await (await env.OFFLOAD_BUCKET.get(pdfKey)).text()).toBe("%PDF-1.7 test");
  });

  it("answers 404 for a missing object of the company", async () => {
    const got = await call(await objectRequest("GET", `/v1/objects/contents/company-7/${uniqueJob()}/nothing.json`));
    expect(got.status).toBe(404);
    expect((await got.json()).error).toBe("not_found");
  });

  it("refuses another company's keys, for reading and writing", async () => {
    const key = `contents/company-8/${uniqueJob()}/e1.json`;
    await env.OFFLOAD_BUCKET.put(key, "company eight's secret");
    const read = await call(await objectRequest("GET", `/v1/objects/${key}`));
    expect(read.status).toBe(403);
    expect((await read.json()).error).toBe("key_out_of_scope");
    const write = await call(await objectRequest("PUT", `/v1/objects/${key}`, { body: "overwritten" }));
    expect(write.status).toBe(403);
    expect(await (await env.OFFLOAD_BUCKET.get(key)).text()).toBe("company eight's secret");
    // company-70 is not company-7, and a key outside the prefixes is refused.
    expect((await call(await objectRequest("PUT", "/v1/objects/contents/company-70/j/e.json", { body: "x" }))).status).toBe(403);
    expect((await call(await objectRequest("GET", "/v1/objects/renderer/fonts/latin-Regular.ttf"))).status).toBe(403);
    expect((await call(await objectRequest("PUT", "/v1/objects/contents/company-7", { body: "x" }))).status).toBe(403);
  });

  it("refuses path tricks: dot segments, encoded slashes and dots, odd characters", async () => {
    const victim = `contents/company-8/${uniqueJob()}/e1.json`;
    await env.OFFLOAD_BUCKET.put(victim, "untouched");
    const [, , , job] = victim.split("/");
    // ".." is resolved by the URL parser before the Worker sees it: signed over what the client
    // sends it fails the signature, signed over the resolved path it lands in company 8 (403).
    const dotted = `/v1/objects/contents/company-7/../company-8/${job}/e1.json`;
    expect((await call(await objectRequest("PUT", dotted, { body: "x" }))).status).toBe(401);
    const resolved = new URL(ORIGIN + dotted).pathname;
    expect((await call(await objectRequest("PUT", dotted, { body: "x", signedPath: resolved }))).status).toBe(403);
    for (const path of [
      `/v1/objects/contents/company-7%2F..%2Fcompany-8/${job}/e1.json`,
      `/v1/objects/contents/company-7/%2e%2e%2fcompany-8/${job}/e1.json`,
      `/v1/objects/contents%2Fcompany-7/j/e1.json`,
      "/v1/objects/contents/company-7/j/e%201.json",
      "/v1/objects/contents/company-7//e1.json",
      "/v1/objects/contents/company-7/j/./e1.json".replace("/./", "/.%2F"),
    ]) {
      const signedPath = new URL(ORIGIN + path).pathname;
      const answer = await call(await objectRequest("PUT", path, { body: "x", signedPath }));
      expect([path, answer.status]).toEqual([path, 403]);
    }
    expect(await (await env.OFFLOAD_BUCKET.get(victim)).text()).toBe("untouched");
  });

  it("refuses unsigned, stale and tampered requests", async () => {
    const key = `contents/company-7/${uniqueJob()}/e1.json`;
    const unsigned = await call(new Request(`${ORIGIN}/v1/objects/${key}`, { method: "PUT", body: "x" }));
    expect(unsigned.status).toBe(400);
    expect((await unsigned.json()).error).toBe("missing_header");
    const stale = await call(await objectRequest("PUT", `/v1/objects/${key}`, { body: "x", timestamp: Math.floor(Date.now() / 1000) - 3600 }));
    expect(stale.status).toBe(401);
    expect((await stale.json()).error).toBe("stale_timestamp");
    const staleGet = await call(await objectRequest("GET", `/v1/objects/${key}`, { timestamp: Math.floor(Date.now() / 1000) - 3600 }));
    expect(staleGet.status).toBe(401);
    const good = await objectRequest("PUT", `/v1/objects/${key}`, { body: "original" });
    const tampered = new Request(good.url, { method: "PUT", headers: good.headers, body: "tampered" });
    const answer = await call(tampered);
    expect(answer.status).toBe(401);
    expect((await answer.json()).error).toBe("body_hash_mismatch");
    expect(await env.OFFLOAD_BUCKET.get(key)).toBeNull();
    // Replaying an accepted PUT is refused (the nonce is remembered).
    const first = await objectRequest("PUT", `/v1/objects/${key}`, { body: "original" });
    const replay = first.clone();
    expect((await call(first)).status).toBe(200);
    expect((await call(replay)).status).toBe(409);
  });

  it("caps objects at MAX_OBJECT_BYTES with 413, storing nothing", async () => {
    const key = `contents/company-7/${uniqueJob()}/big.json`;
    const big = new Uint8Array(MAX_OBJECT_BYTES + 1);
    const answer = await call(await objectRequest("PUT", `/v1/objects/${key}`, { body: big }));
    expect(answer.status).toBe(413);
    expect((await answer.json()).error).toBe("body_too_large");
    expect(await env.OFFLOAD_BUCKET.get(key)).toBeNull();
    const method = await call(await objectRequest("DELETE", `/v1/objects/${key}`));
    expect(method.status).toBe(405);
  });
});
