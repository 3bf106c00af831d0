// What one recipient receives: a batch content resolved (inline, or by reference from R2)
// and its plain-text part (the content's own, or generated from the HTML as the AWS sender
// does in lambdas/email/text.py).

import { SealError, openContent } from "./sealing.js";
import { sha256Hex } from "./signing.js";

/** A content cannot be used for this recipient: final, with a stable code (never the data). */
export class ContentError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "ContentError";
    this.code = code;
  }
}

export const MAX_REFERENCE_BYTES = 20_000_000;

const BLOCK = new Set(
  "p div section article header footer table tr ul ol h1 h2 h3 h4 h5 h6 blockquote pre hr".split(" "),
);
const SKIP = new Set(["script", "style", "head", "title"]);
const ENTITIES = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'", nbsp: "\u00a0" };

function decodeEntities(text) {
  return text.replace(/&(#x[0-9a-f]+|#[0-9]+|[a-z]+);/gi, (whole, name) => {
    if (name[0] === "#") {
      const code = name[1] === "x" || name[1] === "X" ? parseInt(name.slice(2), 16) : parseInt(name.slice(1), 10);
      return Number.isFinite(code) && code >= 0 && code <= 0x10ffff ? String.fromCodePoint(code) : whole;
    }
    return ENTITIES[name.toLowerCase()] ?? whole;
  });
}

function attribute(tag, name) {
  const match = new RegExp(`\\s${name}\\s*=\\s*("([^"]*)"|'([^']*)'|([^\\s>]+))`, "i").exec(tag);
  return match ? decodeEntities(match[2] ?? match[3] ?? match[4] ?? "") : null;
}

/** Plain text from HTML: blocks become paragraphs, <br> a line break, <li> a dash, links keep their URL. */
export function htmlToText(html) {
  const parts = [];
  const links = [];
  let skip = 0;
  let pre = 0;
  const token = /<!--[\s\S]*?-->|<\/?([a-zA-Z][a-zA-Z0-9]*)\b[^>]*>|[^<]+|</g;
  for (let m = token.exec(html); m !== null; m = token.exec(html)) {
    const [whole, rawName] = m;
    if (whole.startsWith("<!--")) continue;
    if (!rawName) {
      if (skip) continue;
      const data = decodeEntities(whole);
      parts.push(pre ? data : data.replace(/\s+/g, " "));
      continue;
    }
    const name = rawName.toLowerCase();
    const closing = whole[1] === "/";
    const selfClosing = whole.endsWith("/>");
    if (SKIP.has(name)) {
      if (closing) skip = Math.max(0, skip - 1);
      else if (!selfClosing) skip += 1;
      continue;
    }
    if (closing) {
      if (BLOCK.has(name)) {
        parts.push("\n\n");
        if (name === "pre") pre = Math.max(0, pre - 1);
      } else if (name === "a" && links.length) {
        const href = links.pop();
        if (href && /^(https?:\/\/|mailto:)/.test(href)) parts.push(` (${href.replace(/^mailto:/, "")})`);
      }
      continue;
    }
    if (name === "br") parts.push("\n");
    else if (name === "li") parts.push("\n- ");
    else if (name === "td" || name === "th") parts.push(" ");
    else if (BLOCK.has(name)) {
      parts.push("\n\n");
      if (name === "pre") pre += 1;
    } else if (name === "a") links.push(attribute(whole, "href"));
    else if (name === "img") {
      const alt = attribute(whole, "alt");
      if (alt) parts.push(alt);
    }
  }
  const text = parts
    .join("")
    .split("\n")
    .map((line) => line.trim())
    .join("\n");
  return `${text.replace(/\n{3,}/g, "\n\n").trim()}\n`;
}

/** Read a content stored by reference in R2, checked against its size and SHA-256. */
export async function fetchReference(bucket, ref) {
  if (ref.store !== "r2") throw new ContentError("unsupported_store", "only R2 references can be read by the Worker");
  if (ref.bytes > MAX_REFERENCE_BYTES) throw new ContentError("message_too_large", "a referenced object is too large");
  if (!bucket) throw new ContentError("reference_missing", "the OFFLOAD_BUCKET binding is missing");
  const object = await bucket.get(ref.key);
  if (object === null) throw new ContentError("reference_missing", "stored object unavailable (NoSuchKey)");
  const data = new Uint8Array(await object.arrayBuffer());
  if (data.byteLength !== ref.bytes || (await sha256Hex(data)) !== ref.sha256) {
    throw new ContentError("reference_mismatch", "stored object does not match its size and SHA-256");
  }
  let content;
  try {
    content = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(data));
  } catch {
    throw new ContentError("reference_invalid", "stored content is not UTF-8 JSON");
  }
  if (!content || typeof content !== "object" || !["rendered", "template", "sealed"].includes(content.kind)) {
    throw new ContentError("reference_invalid", "stored content must be a rendered or template content");
  }
  if (typeof content.subject !== "string" || typeof content.html !== "string") {
    if (content.kind !== "sealed") throw new ContentError("reference_invalid", "stored content lacks subject or html");
  }
  return content;
}

/**
 * Resolve every content of a batch once: {content_id: {content} | {error}}. jinja2 templates
 * cannot run in workerd (no eval), so the bridge renders list templates before a batch goes
 * to the Worker; a template that arrives anyway fails its recipients with template_unsupported.
 */
export async function resolveContents(batch, bucket, sealRoots = null) {
  const out = {};
  for (const [id, content] of Object.entries(batch.contents)) {
    try {
      let resolved = content.kind === "reference" ? await fetchReference(bucket, content.ref) : content;
      if (resolved.kind === "sealed") {
        // A password mail: opened in memory right before sending (docs/security.md).
        try {
          resolved = await openContent(sealRoots, batch.company_id, batch.job_id, id, resolved);
        } catch (error) {
          if (error instanceof SealError) throw new ContentError(error.code, error.message);
          throw error;
        }
      }
      if (resolved.kind !== "rendered") {
        throw new ContentError(
          "template_unsupported",
          "jinja2 templates are rendered by the bridge for the Cloudflare path; this Worker sends rendered contents",
        );
      }
      out[id] = {
        content: {
          subject: resolved.subject,
          html: resolved.html,
          text: typeof resolved.text === "string" ? resolved.text : htmlToText(resolved.html),
          from_name: resolved.from_name,
          reply_to: resolved.reply_to,
        },
      };
    } catch (error) {
      if (!(error instanceof ContentError)) throw error;
      out[id] = { error };
    }
  }
  return out;
}

/** Largest total of one message's attachments (Cloudflare Email Service takes 5 MiB per message). */
export const MAX_ATTACHMENT_BYTES = 4_000_000;

/**
 * A recipient's attachments (contract `attachment`: filename, content_type, ref) read from R2
 * and checked against their size and SHA-256, as [{filename, contentType, content}].
 * ContentError (final for that recipient) when one is missing, altered or too large.
 */
export async function readAttachments(bucket, attachments) {
  const total = attachments.reduce((sum, a) => sum + Number(a.ref?.bytes ?? 0), 0);
  if (total > MAX_ATTACHMENT_BYTES) {
    throw new ContentError("attachments_too_large", `attachments total ${total} bytes; the limit is ${MAX_ATTACHMENT_BYTES}`);
  }
  const out = [];
  for (const attachment of attachments) {
    const ref = attachment.ref;
    if (ref.store !== "r2") throw new ContentError("unsupported_store", "only R2 attachments can be read by the Worker");
    if (!bucket) throw new ContentError("reference_missing", "the OFFLOAD_BUCKET binding is missing");
    const object = await bucket.get(ref.key);
    if (object === null) throw new ContentError("reference_missing", "attachment unavailable (NoSuchKey)");
    const data = new Uint8Array(await object.arrayBuffer());
    if (data.byteLength !== ref.bytes || (await sha256Hex(data)) !== ref.sha256) {
      throw new ContentError("reference_mismatch", "attachment does not match its size and SHA-256");
    }
    out.push({ filename: attachment.filename, contentType: attachment.content_type ?? ref.content_type ?? "application/octet-stream", content: data });
  }
  return out;
}
