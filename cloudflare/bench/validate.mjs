// CPU cost of the intake's per-request work on a full-size batch, run in Node (V8, the
// engine workerd embeds; workerd's own clock does not advance during CPU work, so it
// cannot time itself). Usage: node bench/validate.mjs
import { readFileSync } from "node:fs";
import { Validator } from "@cfworker/json-schema";

const read = (path) => JSON.parse(readFileSync(new URL(path, import.meta.url), "utf-8"));
const schema = read("../../offload_contract/schemas/v1/contract.schema.json");
const examples = read("../../offload_contract/vectors/messages.json").examples;

const batch = structuredClone(examples.find((e) => e.message_type === "email_batch" && e.valid).message);
batch.recipients = Array.from({ length: 200 }, (_, i) => ({
  recipient_id: `r-${i}`,
  to: `user${i}@example.org`,
  name: `Zoë Ørsted ${i}`,
  content_id: i % 2 ? "e-1" : "e-2",
}));
batch.contents["e-1"].html = `<p>${"Lorem ipsum dolor sit amet ".repeat(3000)}</p>`;
const text = JSON.stringify(batch);
const bytes = new TextEncoder().encode(text);

const validator = new Validator({ definitions: schema.definitions, $ref: "#/definitions/email_batch" }, "7", true);
const time = async (label, fn, n = 300) => {
  for (let i = 0; i < 30; i++) await fn();
  const start = performance.now();
  for (let i = 0; i < n; i++) await fn();
  console.log(`${label}: ${((performance.now() - start) / n).toFixed(3)} ms`);
};

console.log(`email_batch: ${batch.recipients.length} recipients, ${bytes.byteLength} bytes`);
await time("JSON.parse", () => JSON.parse(text));
await time("JSON.parse + schema validation", () => {
  if (!validator.validate(JSON.parse(text)).valid) throw new Error("the benchmark batch must be valid");
});
await time("SHA-256 of the body", () => crypto.subtle.digest("SHA-256", bytes));
