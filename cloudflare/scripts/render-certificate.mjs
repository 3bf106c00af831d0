// Render certificates with the Worker's renderer module (src/certificate-renderer.js) under
// Node, for the Python parity test (tests/lambdas/test_worker_certificate_parity.py) and the
// benchmark (bench/certificates_bench.py). The module is the one the Worker bundles; Node runs
// it in V8, the engine workerd embeds. Fonts and the default logo are the renderer assets
// deployment uploads to R2 (scripts/renderer-assets.mjs).
//
//   node scripts/render-certificate.mjs <job.json> <out.pdf>
//       job: {"template": <template document> | null (the default), "data": {...}, "verify_url": "..."}
//       exit 3 with {"error": code, "message": ...} on stdout when the data cannot be printed
//   node scripts/render-certificate.mjs --bench <job.json> <count>
//       prints {"certificates": n, "cpu_seconds": s, "bytes": b, "first_cpu_seconds": f}: the CPU
//       (user + system) of n warm renders, and of the first one in a fresh isolate (fonts
//       parsed and padded, the first subset)
import { readFileSync, writeFileSync } from "node:fs";
import { CertificateDataError, CertificateFonts, parseTemplate, renderCertificate } from "../src/certificate-renderer.js";
import { RENDERER_ASSETS, assetPath } from "./renderer-assets.mjs";

const asset = (key) => new Uint8Array(readFileSync(assetPath(RENDERER_ASSETS[key])));
const DEFAULT_TEMPLATE = JSON.parse(readFileSync(assetPath("../certificate_render/templates/default.json"), "utf-8"));

function load(jobPath) {
  const job = JSON.parse(readFileSync(jobPath, "utf-8"));
  const fonts = new CertificateFonts(asset("renderer/fonts/latin-Regular.ttf"), asset("renderer/fonts/latin-Bold.ttf"));
  const template = parseTemplate(job.template ?? DEFAULT_TEMPLATE);
  const images = { "default-logo.png": asset("renderer/templates/default-logo.png") };
  return { job, fonts, template, images };
}

const args = process.argv.slice(2);
if (args[0] === "--bench") {
  const cold = process.cpuUsage();
  const { job, fonts, template, images } = load(args[1]);
  const count = Number(args[2] ?? 20);
  await renderCertificate(template, job.data, job.verify_url, fonts, images); // warm: fonts parsed once per isolate
  const firstUsed = process.cpuUsage(cold);
  const start = process.cpuUsage();
  let bytes = 0;
  for (let i = 0; i < count; i++) bytes += (await renderCertificate(template, job.data, job.verify_url, fonts, images)).byteLength;
  const used = process.cpuUsage(start);
  const first = (firstUsed.user + firstUsed.system) / 1e6;
  console.log(JSON.stringify({ certificates: count, cpu_seconds: (used.user + used.system) / 1e6, bytes, first_cpu_seconds: first }));
} else {
  const [jobPath, outPath] = args;
  const { job, fonts, template, images } = load(jobPath);
  try {
    writeFileSync(outPath, await renderCertificate(template, job.data, job.verify_url, fonts, images));
  } catch (error) {
    if (!(error instanceof CertificateDataError)) throw error;
    console.log(JSON.stringify({ error: error.code, message: error.message }));
    process.exit(3);
  }
}
