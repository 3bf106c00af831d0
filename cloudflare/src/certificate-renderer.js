// One certificate PDF from a template JSON and a learner's data: the Worker's counterpart of
// certificate_render/renderer.py, drawing the same design from the same template document
// (layout in millimetres from the top left; text fitted to its box by the same rules: one
// line, shrunk by at most 20 %, else wrapped, down to min_size).
//
// PDF: pdf-lib with @pdf-lib/fontkit, fonts embedded as subsets (only the glyphs used), so
// pdftotext reads the text back. QR code: qrcode-generator, level M, drawn as filled modules
// with a two-module quiet zone like the Lambda's.
//
// Scripts: the Worker carries one font family (Noto Sans "latin" subset: Latin, Greek,
// Cyrillic) and does no bidi reordering or complex shaping. A text with a character outside
// that family fails with `unsupported_characters`, so a certificate is never "rendered"
// without the person's name; the bridge routes such certificates to AWS before they get here
// (docs/cloudflare.md, "Certificates": the script rule).
//
// The module is pure: no bindings, no I/O. certificates.js loads fonts and images (R2) and
// hands them in.

import fontkit from "@pdf-lib/fontkit";
import qrcode from "qrcode-generator";
import {
  PDFDocument,
  clip,
  endPath,
  popGraphicsState,
  pushGraphicsState,
  rectangle,
  rgb as pdfRgb,
} from "pdf-lib";

export const MM = 72 / 25.4;
const LINE_HEIGHT = 1.2;
const QUIET_ZONE = 2;
/** 9999-12-31 23:59:59 UTC: later instants have no four-digit year. */
export const MAX_TIMESTAMP = 253_402_300_799;
const PAGE_SIZES = { A4: [210.0, 297.0], Letter: [215.9, 279.4] };
const DATE_STYLES = new Set(["short", "medium", "long", "full"]);
const NO_BREAK = new Set(["\u00a0", "\u2007", "\u202f"]);
const NUMERIC = /^[+-]?(\d+([.,]\d+)?|[.,]\d+)$/;
const NON_FINITE = /^[+-]?(nan|inf|infinity)$/i;
const ELEMENT_DEFAULTS = {
  x: 20.0, w: 257.0, h: 10.0, size: 14.0, min_size: 6.0, bold: false, align: "C", color: "#000000",
  text: "", prefix: "", suffix: "", format: "long", unit: "%",
};

/** One recipient's data cannot be printed: that recipient fails alone (same codes as the Lambda). */
export class CertificateDataError extends Error {
  constructor(code, message, detail = []) {
    super(message);
    this.name = "CertificateDataError";
    this.code = code;
    this.detail = detail;
  }
}

/** The template cannot be used: every recipient of the batch fails with `code`. */
export class TemplateError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "TemplateError";
    this.code = code;
  }
}

const COLOR = /^#[0-9A-Fa-f]{6}$/;
function rgb(color) {
  if (!COLOR.test(color)) throw new TemplateError("template_invalid", `colour ${JSON.stringify(color)} is not #RRGGBB`);
  return [1, 3, 5].map((i) => parseInt(color.slice(i, i + 2), 16) / 255);
}

/** The template document with the Lambda's defaults applied (page size, element boxes). */
export function parseTemplate(document) {
  if (!document || typeof document !== "object" || !Array.isArray(document.elements) || !document.elements.length) {
    throw new TemplateError("template_invalid", "template: elements are required");
  }
  const page = document.page ?? {};
  const [short, long] = PAGE_SIZES[page.size ?? "A4"] ?? PAGE_SIZES.A4;
  const landscape = (page.orientation ?? "landscape") === "landscape";
  const pageW = landscape ? long : short;
  const pageH = landscape ? short : long;
  const elements = document.elements.map((raw, index) => {
    const element = { ...ELEMENT_DEFAULTS, ...raw };
    if (!("w" in raw)) element.w = Math.max(1.0, pageW - 2 * (raw.x ?? 20.0));
    if (element.x + element.w > pageW + 0.01 || element.y + element.h > pageH + 0.01) {
      throw new TemplateError("template_invalid", `elements/${index}: the box runs off the ${pageW}x${pageH} mm page`);
    }
    if (element.field === "static" && !String(element.text).trim()) {
      throw new TemplateError("template_invalid", `elements/${index}: a static element needs text`);
    }
    rgb(element.color);
    return element;
  });
  const background = document.background ?? {};
  return {
    name: String(document.name ?? "template"),
    elements,
    pageW,
    pageH,
    backgroundColor: background.color || "#FFFFFF",
    backgroundImage: background.image || null,
    border: document.border ?? null,
    logo: document.logo ?? null,
    signature: document.signature ?? null,
    qr: document.qr ?? null,
    language: document.language || "en",
    timezone: document.timezone || "UTC",
  };
}

/** Image file names the template uses, by section (background, logo, signature). */
export function imageNames(template) {
  const out = [];
  if (template.backgroundImage) out.push(["background", template.backgroundImage]);
  for (const section of ["logo", "signature"]) {
    if (template[section]?.image) out.push([section, template[section].image]);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Text: cleaning, coverage, field values.

/** Characters that need no glyph: joiners, bidi controls, variation selectors. */
export function isIgnorable(cp) {
  return (
    [0x00ad, 0x034f, 0x061c, 0x180e].includes(cp) ||
    (cp >= 0x200b && cp <= 0x200f) ||
    (cp >= 0x202a && cp <= 0x202e) ||
    (cp >= 0x2060 && cp <= 0x206f) ||
    (cp >= 0xfe00 && cp <= 0xfe0f) ||
    (cp >= 0xe0100 && cp <= 0xe01ef)
  );
}

const SPACE_LIKE = /[\p{Cc}\s]/u;

/** NFC and one line: control characters and runs of white space become single spaces. */
export function clean(text) {
  let out = "";
  for (const ch of String(text).normalize("NFC")) {
    out += SPACE_LIKE.test(ch) && !NO_BREAK.has(ch) ? " " : ch;
  }
  return out.split(" ").filter(Boolean).join(" ");
}

/**
 * The TrueType font with every glyph padded to 4 bytes (long `loca`), so fontkit's subsetter
 * keeps its glyphs. fontkit writes a subset's `loca` in the short format (offsets / 2) when it
 * is small, which is only right when every glyph has an even length; fontTools (which builds
 * the shipped fonts, scripts/build_certificate_fonts.py) leaves glyphs unpadded, and such a
 * subset draws most glyphs blank. Fonts that are already padded come back unchanged.
 */
export function padGlyphs(input) {
  const bytes = input instanceof Uint8Array ? input : new Uint8Array(input);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const numTables = view.getUint16(4);
  const tables = new Map();
  for (let i = 0; i < numTables; i++) {
    const at = 12 + 16 * i;
    const tag = String.fromCharCode(...bytes.subarray(at, at + 4));
    tables.set(tag, { tag, offset: view.getUint32(at + 8), length: view.getUint32(at + 12) });
  }
  const head = tables.get("head");
  const loca = tables.get("loca");
  const glyf = tables.get("glyf");
  if (!head || !loca || !glyf) return bytes; // not a TrueType-outline font: nothing to pad
  const longLoca = view.getInt16(head.offset + 50) === 1;
  const numGlyphs = view.getUint16(tables.get("maxp").offset + 4);
  const offsets = Array.from({ length: numGlyphs + 1 }, (_, i) =>
    longLoca ? view.getUint32(loca.offset + 4 * i) : view.getUint16(loca.offset + 2 * i) * 2,
  );
  if (offsets.every((o) => o % 4 === 0) && longLoca) return bytes;
  const pad4 = (n) => (n + 3) & ~3;
  let glyfLength = 0;
  for (let g = 0; g < numGlyphs; g++) glyfLength += pad4(offsets[g + 1] - offsets[g]);
  const newGlyf = new Uint8Array(glyfLength);
  const newLoca = new Uint8Array(4 * (numGlyphs + 1));
  const locaView = new DataView(newLoca.buffer);
  let position = 0;
  for (let g = 0; g < numGlyphs; g++) {
    locaView.setUint32(4 * g, position);
    newGlyf.set(bytes.subarray(glyf.offset + offsets[g], glyf.offset + offsets[g + 1]), position);
    position += pad4(offsets[g + 1] - offsets[g]);
  }
  locaView.setUint32(4 * numGlyphs, position);
  const newHead = bytes.slice(head.offset, head.offset + head.length);
  new DataView(newHead.buffer).setInt16(50, 1); // indexToLocFormat: long
  new DataView(newHead.buffer).setUint32(8, 0); // checkSumAdjustment: not kept (nothing reads it)
  const data = new Map([...tables.values()].map((t) => [t.tag, bytes.subarray(t.offset, t.offset + t.length)]));
  data.set("glyf", newGlyf);
  data.set("loca", newLoca);
  data.set("head", newHead);
  const tags = [...data.keys()].sort();
  let size = 12 + 16 * tags.length;
  for (const tag of tags) size += pad4(data.get(tag).length);
  const out = new Uint8Array(size);
  const outView = new DataView(out.buffer);
  out.set(bytes.subarray(0, 12));
  let at = 12 + 16 * tags.length;
  tags.forEach((tag, i) => {
    const table = data.get(tag);
    const record = 12 + 16 * i;
    for (let c = 0; c < 4; c++) out[record + c] = tag.charCodeAt(c);
    out.set(table, at);
    let sum = 0;
    for (let j = 0; j < pad4(table.length); j += 4) sum = (sum + outView.getUint32(at + j)) >>> 0;
    outView.setUint32(record + 4, sum);
    outView.setUint32(record + 8, at);
    outView.setUint32(record + 12, table.length);
    at += pad4(table.length);
  });
  return out;
}

/** The fonts the Worker renders with: one family, regular and bold (TrueType bytes). */
export class CertificateFonts {
  constructor(regular, bold) {
    const regularBytes = padGlyphs(regular);
    const boldBytes = padGlyphs(bold);
    this.regularBytes = regularBytes;
    this.boldBytes = boldBytes;
    this.regular = fontkit.create(regularBytes);
    this.bold = fontkit.create(boldBytes);
    this.covered = new Set(this.regular.characterSet);
    // pdf-lib parses the font bytes on every embedFont; handing it the parsed font instead
    // (one parse per isolate) cuts most of a certificate's CPU time.
    const parsed = new Map([
      [regularBytes, this.regular],
      [boldBytes, this.bold],
    ]);
    this.fontkit = { create: (bytes) => parsed.get(bytes) ?? fontkit.create(bytes) };
  }

  /** What the fonts draw, as sorted inclusive [first, last] code point ranges. */
  codePointRanges() {
    const points = [...this.covered].sort((a, b) => a - b);
    const ranges = [];
    for (const cp of points) {
      const last = ranges.at(-1);
      if (last && cp === last[1] + 1) last[1] = cp;
      else ranges.push([cp, cp]);
    }
    return ranges;
  }

  /** Code points (`U+XXXX`) these fonts cannot draw, in order of first use. */
  unsupported(text) {
    const seen = new Set();
    for (const ch of text) {
      const cp = ch.codePointAt(0);
      if (this.covered.has(cp) || isIgnorable(cp) || ch === " " || NO_BREAK.has(ch)) continue;
      seen.add(`U+${cp.toString(16).toUpperCase().padStart(4, "0")}`);
    }
    return [...seen];
  }

  face(bold) {
    return bold ? this.bold : this.regular;
  }
}

const formatters = new Map();
function cachedFormatter(key, make) {
  let formatter = formatters.get(key);
  if (!formatter) {
    formatter = make();
    formatters.set(key, formatter);
  }
  return formatter;
}

function locale(language, fallback) {
  for (const candidate of [language, fallback, "en"]) {
    if (!candidate) continue;
    try {
      return Intl.getCanonicalLocales(candidate.replace("_", "-"))[0];
    } catch {
      continue;
    }
  }
  return "en";
}

function completedOn(value, element, lang, timezone) {
  const stamp = Number(value);
  if (!Number.isInteger(stamp)) throw new CertificateDataError("invalid_certificate_data", "completed_at is not a Unix time");
  if (stamp < 0 || stamp > MAX_TIMESTAMP) {
    throw new CertificateDataError("invalid_certificate_data", `completed_at ${stamp} is outside the years 1970 to 9999`);
  }
  const style = DATE_STYLES.has(element.format) ? element.format : "long";
  const formatter = cachedFormatter(`d|${lang}|${style}|${timezone}`, () => new Intl.DateTimeFormat(lang, { dateStyle: style, timeZone: timezone }));
  return formatter.format(new Date(stamp * 1000));
}

function gradeText(value, element, lang) {
  const text = value.trim();
  if (!text) return "";
  if (NUMERIC.test(text)) {
    const number = Number(text.replace(",", "."));
    if (element.unit === "%") {
      return cachedFormatter(`p|${lang}`, () => new Intl.NumberFormat(lang, { style: "percent", maximumFractionDigits: 20 })).format(number / 100);
    }
    const formatted = cachedFormatter(`n|${lang}`, () => new Intl.NumberFormat(lang, { maximumFractionDigits: 20 })).format(number);
    return `${formatted} ${element.unit}`.trim();
  }
  if (NON_FINITE.test(text)) return "";
  return text;
}

/** The text an element prints (prefix and suffix included), or "" to print nothing. */
export function fieldValue(element, data, template) {
  if (element.field === "static") return element.text;
  const value = data[element.field];
  if (value === null || value === undefined || value === "") return "";
  const lang = locale(data.language, template.language);
  let text;
  if (element.field === "completed_at") text = completedOn(value, element, lang, template.timezone);
  else if (element.field === "grade") text = gradeText(String(value), element, lang);
  else text = String(value);
  if (!text.trim()) return "";
  return element.prefix + text + element.suffix;
}

/**
 * Each element's text, checked like the Lambda's certificate_texts: a blank name or course,
 * a time outside 1970-9999, or characters the fonts lack throw CertificateDataError.
 */
export function certificateTexts(template, data, fonts) {
  for (const name of ["learner_name", "course_name"]) {
    const value = clean(String(data[name] ?? ""));
    const visible = [...value].some((ch) => ch !== " " && !isIgnorable(ch.codePointAt(0)));
    if (!visible) throw new CertificateDataError("invalid_certificate_data", `${name} is blank`);
  }
  // Static texts are checked too: the Worker has fewer fonts than the Lambda, and a template
  // in another script must not print blanks.
  const texts = template.elements.map((element) => clean(fieldValue(element, data, template)));
  const missing = fonts.unsupported(texts.join(""));
  if (missing.length) {
    const shown = missing.slice(0, 20).join(" ") + (missing.length > 20 ? " ..." : "");
    throw new CertificateDataError("unsupported_characters", `no font for the characters ${shown}`, missing);
  }
  return texts;
}

// ---------------------------------------------------------------------------------------
// Layout: the Lambda's fit() (text/py), widths in ems.

function breakableBefore(cp) {
  return (cp >= 0x2e80 && cp <= 0x9fff) || (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0x3400 && cp <= 0x4dbf);
}

function segments(text) {
  const pieces = [];
  let current = "";
  for (const ch of text) {
    const last = current ? [...current].at(-1) : "";
    const boundary =
      current && ((current.endsWith(" ") && ch !== " ") || breakableBefore(ch.codePointAt(0)) || breakableBefore(last.codePointAt(0)));
    if (boundary && (!/\p{P}/u.test(ch) || current.endsWith(" "))) {
      pieces.push(current);
      current = "";
    }
    current += ch;
  }
  if (current) pieces.push(current);
  return pieces;
}

function wrap(pieces, widths, maxEm) {
  const lines = [];
  let current = "";
  let currentW = 0;
  pieces.forEach((piece, i) => {
    if (current && currentW + widths[i] > maxEm) {
      lines.push(current.trimEnd());
      current = "";
      currentW = 0;
    }
    current += piece;
    currentW += widths[i];
  });
  if (current.trim()) lines.push(current.trimEnd());
  return lines;
}

/** The largest size (down to min_size) at which the text fits its box: one line, shrunk, or wrapped. */
export function fit(widthEm, text, { widthMm, heightMm, size, minSize }) {
  const widthPt = widthMm * MM;
  const lineW = widthEm(text);
  if (lineW * size <= widthPt) return { size, lines: [text] };
  const single = widthPt / lineW;
  if (single >= Math.max(minSize, size * 0.8)) return { size: Math.floor(single * 2) / 2, lines: [text] };
  const pieces = segments(text);
  const widths = pieces.map(widthEm);
  for (let s = size; s >= minSize; s -= 0.5) {
    const lines = wrap(pieces, widths, widthPt / s);
    if (lines.length * LINE_HEIGHT * s <= heightMm * MM && lines.every((t) => widthEm(t) * s <= widthPt)) {
      return { size: s, lines };
    }
  }
  return { size: minSize, lines: wrap(pieces, widths, widthPt / minSize) };
}

// ---------------------------------------------------------------------------------------
// Drawing.

function drawBlock(page, pdfFont, face, text, element, template) {
  const widthEm = (t) => pdfFont.widthOfTextAtSize(t, 1);
  const block = fit(widthEm, text, {
    widthMm: element.w,
    heightMm: element.h,
    size: element.size,
    minSize: Math.min(element.min_size, element.size),
  });
  const s = block.size;
  const lineH = LINE_HEIGHT * s;
  const total = lineH * block.lines.length;
  const topPt = template.pageH * MM - element.y * MM;
  const boxH = element.h * MM;
  const mid = Math.min((face.ascent + face.descent) / 2 / face.unitsPerEm, 0.42);
  const [r, g, b] = rgb(element.color);
  page.pushOperators(pushGraphicsState(), rectangle(element.x * MM - 2, topPt - boxH - 2, element.w * MM + 4, boxH + 4), clip(), endPath());
  block.lines.forEach((line, i) => {
    const baseline = topPt - (boxH - total) / 2 - i * lineH - lineH / 2 - mid * s;
    const width = widthEm(line) * s;
    let start;
    if (element.align === "L") start = element.x * MM;
    else if (element.align === "R") start = (element.x + element.w) * MM - width;
    else start = element.x * MM + (element.w * MM - width) / 2;
    page.drawText(line, { x: start, y: baseline, size: s, font: pdfFont, color: pdfRgb(r, g, b) });
  });
  page.pushOperators(popGraphicsState());
}

/** Dark modules of the QR code for `data` (level M), as a square boolean matrix. */
export function qrMatrix(data) {
  const qr = qrcode(0, "M");
  qr.addData(data, "Byte");
  qr.make();
  const n = qr.getModuleCount();
  return Array.from({ length: n }, (_, row) => Array.from({ length: n }, (_, col) => qr.isDark(row, col)));
}

function drawQr(page, data, spec, pageH) {
  const x = Number(spec.x);
  const y = Number(spec.y);
  const size = Number(spec.size);
  const rows = qrMatrix(data);
  const n = rows.length;
  const module = (size / (n + 2 * QUIET_ZONE)) * MM;
  page.drawRectangle({ x: x * MM, y: (pageH - y - size) * MM, width: size * MM, height: size * MM, color: pdfRgb(1, 1, 1) });
  const left = x * MM + QUIET_ZONE * module;
  const top = (pageH - y) * MM - QUIET_ZONE * module;
  rows.forEach((row, r) => {
    let c = 0;
    while (c < n) {
      if (!row[c]) {
        c += 1;
        continue;
      }
      const from = c;
      while (c < n && row[c]) c += 1;
      // Runs of dark modules are one rectangle each (a little wider than the run, no seams).
      page.drawRectangle({ x: left + from * module, y: top - (r + 1) * module, width: (c - from) * module, height: module * 1.001, color: pdfRgb(0, 0, 0) });
    }
  });
}

async function embedImage(doc, bytes) {
  const head = new Uint8Array(bytes.slice(0, 4));
  if (head[0] === 0x89 && head[1] === 0x50) return doc.embedPng(bytes);
  if (head[0] === 0xff && head[1] === 0xd8) return doc.embedJpg(bytes);
  throw new TemplateError("template_invalid", "template images must be PNG or JPEG in the Worker");
}

/**
 * The certificate as PDF bytes. `images` maps the template's image file names to their bytes.
 * Throws CertificateDataError for data that cannot be printed, TemplateError for a bad template.
 */
export async function renderCertificate(template, data, verifyUrl, fonts, images = {}) {
  const texts = certificateTexts(template, data, fonts);
  const doc = await PDFDocument.create({ updateMetadata: false });
  doc.registerFontkit(fonts.fontkit);
  const stamp = Math.min(Math.max(Number(data.completed_at) || 0, 0), MAX_TIMESTAMP);
  doc.setTitle("Certificate");
  doc.setProducer("ManiReports Cloud Offload");
  doc.setCreationDate(new Date(stamp * 1000));
  const k = MM;
  const pageW = template.pageW * k;
  const pageH = template.pageH * k;
  const page = doc.addPage([pageW, pageH]);

  const picture = async (name) => {
    const bytes = images[name];
    if (!bytes) throw new TemplateError("template_invalid", `image ${JSON.stringify(name)} is missing`);
    return embedImage(doc, bytes);
  };
  if (template.backgroundImage) {
    page.drawImage(await picture(template.backgroundImage), { x: 0, y: 0, width: pageW, height: pageH });
  } else if (template.backgroundColor.toUpperCase() !== "#FFFFFF") {
    const [r, g, b] = rgb(template.backgroundColor);
    page.drawRectangle({ x: 0, y: 0, width: pageW, height: pageH, color: pdfRgb(r, g, b) });
  }
  const border = template.border;
  if (border) {
    const rings = [[Number(border.inset ?? 8), Number(border.width ?? 1.5), border.color ?? "#000000"]];
    if (border.inner_color) {
      rings.push([Number(border.inset ?? 8) + Number(border.inner_gap ?? 3), Number(border.inner_width ?? 0.5), border.inner_color]);
    }
    for (const [inset, width, color] of rings) {
      if (width <= 0) continue;
      const [r, g, b] = rgb(color);
      const x = inset * k;
      page.drawRectangle({ x, y: x, width: pageW - 2 * x, height: pageH - 2 * x, borderColor: pdfRgb(r, g, b), borderWidth: width * k });
    }
  }
  for (const section of ["logo", "signature"]) {
    const spec = template[section];
    if (!spec?.image) continue;
    const image = await picture(spec.image);
    const x = Number(spec.x ?? 136.5);
    const y = Number(spec.y ?? 16);
    const w = Number(spec.w ?? 24);
    const h = (w * image.height) / image.width;
    page.drawImage(image, { x: x * k, y: pageH - (y + h) * k, width: w * k, height: h * k });
  }

  const embedded = new Map();
  const pdfFont = async (bold) => {
    if (!embedded.has(bold)) {
      embedded.set(bold, await doc.embedFont(bold ? fonts.boldBytes : fonts.regularBytes, { subset: true }));
    }
    return embedded.get(bold);
  };
  for (let i = 0; i < template.elements.length; i++) {
    const element = template.elements[i];
    const text = texts[i];
    if (!text) continue;
    drawBlock(page, await pdfFont(Boolean(element.bold)), fonts.face(Boolean(element.bold)), text, element, template);
  }
  if (template.qr) drawQr(page, verifyUrl, template.qr, template.pageH);
  return doc.save({ useObjectStreams: false });
}
