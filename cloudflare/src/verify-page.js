// The human certificate verify page, the same page the AWS API Lambda serves
// (lambdas/certificates/verification.py): the labels, right-to-left languages, style and
// Content-Security-Policy come from one shared file, offload_contract/pages/verify.json.
// The language is the certificate's own, else the browser's first, else English; the date is
// written by the runtime's CLDR data (Intl), as Babel does on AWS.

import shared from "../../offload_contract/pages/verify.json";

export const VERIFY_PAGE_CSP = shared.content_security_policy;

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;" };
const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);

function pageLanguage(record, acceptLanguage) {
  const wanted = (record?.language || (acceptLanguage || "").split(",")[0].split(";")[0].trim() || "en")
    .replace("_", "-")
    .toLowerCase();
  const base = wanted.split("-")[0];
  return { shown: shared.labels[base] ? base : "en", locale: wanted };
}

function longDate(seconds, locale) {
  const clamped = Math.min(Math.max(Number(seconds) || 0, 0), 253402300799);
  const when = new Date(clamped * 1000);
  try {
    return new Intl.DateTimeFormat(locale, { dateStyle: "long", timeZone: "UTC" }).format(when);
  } catch {
    return new Intl.DateTimeFormat("en", { dateStyle: "long", timeZone: "UTC" }).format(when);
  }
}

/** The page for `code`: `record` is the stored certificate (null for an unknown code). */
export function verifyPage(code, record, acceptLanguage) {
  const { shown, locale } = pageLanguage(record, acceptLanguage);
  const t = shared.labels[shown];
  const state = !record ? "unknown" : record.revoked_at ? "revoked" : "valid";
  const dir = shared.rtl_languages.includes(shown) ? "rtl" : "ltr";
  const facts = record
    ? `<dl>
<dt>${escapeHtml(t.name)}</dt><dd>${escapeHtml(record.learner_name)}</dd>
<dt>${escapeHtml(t.course)}</dt><dd>${escapeHtml(record.course_name)}</dd>
<dt>${escapeHtml(t.date)}</dt><dd>${escapeHtml(longDate(record.completed_at, locale))}</dd>
${record.issuer_name ? `<dt>${escapeHtml(t.issuer)}</dt><dd>${escapeHtml(record.issuer_name)}</dd>\n` : ""}<dt>${escapeHtml(t.code)}</dt><dd><code>${escapeHtml(code)}</code></dd>
</dl>`
    : "";
  return `<!doctype html>
<html lang="${escapeHtml(shown)}" dir="${dir}">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>${escapeHtml(t.title)}</title>
<style>${shared.style}</style>
</head>
<body>
<h1>${escapeHtml(t.title)}</h1>
<p class="status ${state}" role="status">${escapeHtml(t[state])}</p>
${facts}
</body>
</html>
`;
}

/** Whether the caller asked for the JSON answer (machines), as on AWS. */
export function wantsJson(request) {
  const url = new URL(request.url);
  return url.searchParams.get("format") === "json" || (request.headers.get("accept") || "").includes("application/json");
}
