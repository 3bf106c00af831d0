// Worker tests run inside workerd (the Workers runtime) through the Workers Vitest
// integration. Only test/**/*.test.js is collected, so nothing Node-side lands in the pool.
import { readFileSync } from "node:fs";
import { cloudflareTest } from "@cloudflare/vitest-pool-workers";
import { defineConfig } from "vitest/config";
import { RENDERER_ASSETS, assetPath } from "./scripts/renderer-assets.mjs";

// Python-packed, Python-signed submissions written by tests/test_cloudflare_worker.py; the
// cross-language test is skipped when vitest runs on its own.
const crossLanguageFile = process.env.MRCO_CROSS_LANGUAGE_REQUESTS;
const CROSS_LANGUAGE_REQUESTS = crossLanguageFile ? readFileSync(crossLanguageFile, "utf-8") : "";

// The signing vectors' public test roots; real roots are Worker secrets (docs/cloudflare.md).
export const TEST_KEYSETS = JSON.stringify({
  current: "k2026",
  keysets: {
    k2026: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
    "rot-b": "1ui7pf5NDlfg2mHdUOmim0vZfoSqeHra2S363aTPXis",
  },
});

// The certificate renderer's assets, as deployment uploads them to R2 (scripts/renderer-assets.mjs);
// tests seed Miniflare's R2 from this binding (test/helpers.js seedRendererAssets). Built by `make setup`.
const RENDERER_ASSETS_B64 = JSON.stringify(
  Object.fromEntries(Object.entries(RENDERER_ASSETS).map(([key, file]) => [key, readFileSync(assetPath(file)).toString("base64")])),
);

export default defineConfig({
  plugins: [
    cloudflareTest({
      wrangler: { configPath: "./wrangler.jsonc" },
      miniflare: {
        bindings: { HMAC_KEYSETS: TEST_KEYSETS, CROSS_LANGUAGE_REQUESTS, TEST_RENDERER_ASSETS: RENDERER_ASSETS_B64 },
      },
    }),
  ],
  test: {
    include: ["test/**/*.test.js"],
    // The Worker logs one JSON line per request; show them only for failing tests.
    silent: "passed-only",
  },
});
