// Submissions built by the Python side (offload_contract: codec, packer, signer) and sent to
// the Worker's intake byte for byte. tests/test_cloudflare_worker.py writes them just before
// it runs this suite; run alone, vitest skips this file.
import { env, exports } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { base64ToBytes } from "../src/signing.js";

const requests = env.CROSS_LANGUAGE_REQUESTS ? JSON.parse(env.CROSS_LANGUAGE_REQUESTS) : [];

describe.skipIf(requests.length === 0)("Python-signed submissions", () => {
  it.each(requests.map((r) => [r.name, r]))("%s", async (_name, r) => {
    const response = await exports.default.fetch(
      new Request("https://offload.example/v1/batches", {
        method: "POST",
        headers: r.headers,
        body: base64ToBytes(r.body_b64),
      }),
    );
    const answer = await response.json();
    expect({ status: response.status, answer }).toMatchObject({ status: r.expect_status });
    if (r.expect_status === 202) expect(answer).toEqual({ batch_id: r.batch_id });
  });
});
