// POST /v1/certificates/revoke: the bridge revokes and reinstates its company's certificates; the
// public verify route then says so (the record stays, as on AWS).
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import worker from "../src/index.js";
import { ORIGIN, signedRequest, uniqueJob } from "./helpers.js";

const records = () => env.PUBLIC_RECORDS.get(env.PUBLIC_RECORDS.idFromName("public"));
const verify = async (code) => (await worker.fetch(new Request(`${ORIGIN}/v1/certificates/verify/${code}?format=json`), env)).json();
const revoke = async (body, options) => worker.fetch(await signedRequest("/v1/certificates/revoke", JSON.stringify(body), options), env);

async function rendered(company = 7) {
  const job = uniqueJob();
  const code = `R${job.replace(/[^A-Za-z0-9]/g, "").toUpperCase().slice(-14)}`.padEnd(12, "X"); // issued codes: >= 12
  expect(
    await records().putCertificate(code, {
      company_id: company, job_id: job, recipient_id: "r-1", key: `certificates/company-${company}/${job}/r-1.pdf`,
      learner_name: "Léa Ørsted", course_name: "Ladders", completed_at: 1764400000, issuer_name: "Acme",
    }),
  ).toBe(true);
  return code;
}

describe("POST /v1/certificates/revoke", () => {
  it("revokes and reinstates a certificate of the signing company; verify says so", async () => {
    const code = await rendered();
    expect((await verify(code)).valid).toBe(true);
    const answer = await revoke({ code, revoke: true, reason: "issued in error" });
    expect(answer.status).toBe(200);
    expect(await answer.json()).toEqual({ code, revoked: true });
    const revoked = await verify(code);
    expect(revoked).toMatchObject({ valid: false, code, learner_name: "Léa Ørsted" });
    expect(Number.isInteger(revoked.revoked_at)).toBe(true);
    expect((await revoke({ code, revoke: false })).status).toBe(200);
    const again = await verify(code);
    expect(again.valid).toBe(true);
    expect(again.revoked_at).toBeUndefined();
  });

  it("refuses another company's certificate, unknown codes and bad requests, changing nothing", async () => {
    const code = await rendered(7);
    const foreign = await revoke({ code, revoke: true, reason: "x" }, { company: 8 });
    expect(foreign.status).toBe(404);
    expect((await verify(code)).valid).toBe(true);
    expect((await revoke({ code: "NOSUCHCODE0001", revoke: true, reason: "x" })).status).toBe(404);
    expect((await revoke({ code, revoke: true })).status).toBe(400);
    expect((await revoke({ code, revoke: true, reason: "  " })).status).toBe(400);
    expect((await revoke({ code: "bad code", revoke: true, reason: "x" })).status).toBe(400);
    expect((await revoke({ code, revoke: "yes", reason: "x" })).status).toBe(400);
    const unsigned = await worker.fetch(new Request(`${ORIGIN}/v1/certificates/revoke`, { method: "POST", body: JSON.stringify({ code, revoke: true, reason: "x" }) }), env);
    expect(unsigned.status).toBe(400);
    const get = await worker.fetch(new Request(`${ORIGIN}/v1/certificates/revoke`), env);
    expect(get.status).toBe(405);
    expect((await verify(code)).valid).toBe(true);
  });
});
