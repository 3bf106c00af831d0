// The certificate renderer's assets: the fonts and the default template's logo, uploaded to the
// OFFLOAD_BUCKET at deploy time (they are not bundled: the Worker stays small) and read by
// src/certificates.js. One list for deployment, `wrangler dev` (demo, e2e tests) and vitest.
//
//   node scripts/renderer-assets.mjs --remote                       # the deployed bucket
//   node scripts/renderer-assets.mjs --local --persist-to <state>   # wrangler dev's local R2
//
// The fonts are built by `make setup` (scripts/build_certificate_fonts.py) from Debian's Noto
// packages into certificate_render/fonts/, the same files the Lambda ships.
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const BUCKET = "mrco-offload";

/** R2 key -> file (relative to cloudflare/). Keys match FONT_KEYS and DEFAULT_IMAGE_PREFIX in src/certificates.js. */
export const RENDERER_ASSETS = Object.freeze({
  "renderer/fonts/latin-Regular.ttf": "../certificate_render/fonts/latin-Regular.ttf",
  "renderer/fonts/latin-Bold.ttf": "../certificate_render/fonts/latin-Bold.ttf",
  "renderer/templates/default-logo.png": "../certificate_render/templates/default-logo.png",
});

export function assetPath(file) {
  return fileURLToPath(new URL(`../${file}`, import.meta.url));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const where = process.argv.slice(2);
  if (!where.includes("--remote") && !where.includes("--local")) {
    console.error("say where: --remote (the deployed bucket) or --local [--persist-to <dir>]");
    process.exit(2);
  }
  for (const [key, file] of Object.entries(RENDERER_ASSETS)) {
    const path = assetPath(file);
    if (!existsSync(path)) {
      console.error(`${path} is missing: run \`make setup\` (it builds the certificate fonts)`);
      process.exit(1);
    }
    execFileSync("npx", ["--no-install", "wrangler", "r2", "object", "put", `${BUCKET}/${key}`, "--file", path, ...where], {
      stdio: ["ignore", "ignore", "inherit"],
      env: { ...process.env, WRANGLER_SEND_METRICS: "false" },
    });
    console.log(`uploaded ${key}`);
  }
}
