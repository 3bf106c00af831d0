// The contract schema, read from offload_contract/schemas/v1 (no copy), validated inside
// workerd with @cfworker/json-schema, classifying every shared example as Python does.
import { describe, expect, it } from "vitest";
import schemaDocument from "../../offload_contract/schemas/v1/contract.schema.json";
import messages from "../../offload_contract/vectors/messages.json";
import { ContractError, MESSAGE_TYPES, isValid, schemaDefinitions, validate } from "../src/contract.js";

const EXAMPLES = messages.examples;

describe("schema source", () => {
  it("is the shared draft-07 file, with every message type defined", () => {
    expect(schemaDocument.$schema).toBe("http://json-schema.org/draft-07/schema#");
    expect(schemaDefinitions()).toBe(schemaDocument.definitions);
    for (const type of MESSAGE_TYPES) expect(schemaDocument.definitions[type]).toBeTypeOf("object");
  });

  it("covers every message type with valid and invalid examples", () => {
    for (const type of MESSAGE_TYPES) {
      expect(EXAMPLES.some((e) => e.message_type === type && e.valid)).toBe(true);
    }
    expect(EXAMPLES.filter((e) => !e.valid).length).toBeGreaterThanOrEqual(10);
  });
});

describe.each(EXAMPLES.map((e) => [e.valid ? "valid" : "invalid", e.name, e]))("%s example: %s", (_v, _n, example) => {
  it("is classified as declared", () => {
    const copy = structuredClone(example.message);
    expect(isValid(example.message_type, copy)).toBe(example.valid);
    if (example.valid) {
      expect(() => validate(example.message_type, copy)).not.toThrow();
    } else {
      expect(() => validate(example.message_type, copy)).toThrow(ContractError);
    }
    expect(copy).toEqual(example.message);
  });
});

function errorOf(type, message) {
  try {
    validate(type, message);
  } catch (error) {
    return error;
  }
  return null;
}

const byName = (name) => structuredClone(EXAMPLES.find((e) => e.name === name).message);

describe("errors name the path and the rule, as offload_contract.validate does", () => {
  // Paths and rules below are what the Python validator reports for the same examples.
  it.each([
    ["email batch without recipients", "email_batch", "recipients", "minItems"],
    ["unknown top-level field", "email_batch", "(root)", "additionalProperties"],
    ["recipient address without @", "email_batch", "recipients/0/to", "pattern"],
    ["wrong contract version", "email_batch", "contract_version", "const"],
    ["content of unknown kind", "email_batch", "contents/e-1", "oneOf"],
    ["certificate without verification code", "certificate_batch", "recipients/0/certificate", "required"],
    ["sent result without provider message id", "result_batch", "results/0", "required"],
    ["status outside the enum", "result_batch", "results/0/status", "enum"],
    ["negative company id", "result_batch", "company_id", "minimum"],
    ["callback key id without company", "email_batch", "callback/key_id", "pattern"],
    ["envelope of unknown message type", "envelope", "message_type", "enum"],
  ])("%s -> %s at %s", (name, type, path, rule) => {
    const error = errorOf(type, byName(name));
    expect(error).toBeInstanceOf(ContractError);
    expect(error.path).toBe(path);
    expect(error.reason).toBe(`fails rule '${rule}'`);
    expect(error.message).toBe(`${type} violates contract v1 at ${path}: fails rule '${rule}'`);
  });

  it("never quotes a field value", () => {
    const secret = "Temp-Pa55word!-do-not-log";
    const message = byName("email batch, rendered IOMAD rows with shared fan-out content");
    message.recipients[0].to = secret;
    message.contents["e-1"].html = `<p>password: ${secret}</p>`;
    const error = errorOf("email_batch", message);
    expect(error).toBeInstanceOf(ContractError);
    expect(`${error.message} ${error.path} ${error.reason} ${error.stack}`).not.toContain(secret);
    const unknownField = byName("email batch, rendered IOMAD rows with shared fan-out content");
    unknownField.password = secret;
    const second = errorOf("email_batch", unknownField);
    expect(`${second.message} ${second.stack}`).not.toContain(secret);
  });

  it("rejects an unknown message type loudly", () => {
    expect(() => validate("sms_batch", {})).toThrow(TypeError);
  });

  it("anchors identifier patterns (no trailing newline slips through)", () => {
    const message = byName("email batch, rendered IOMAD rows with shared fan-out content");
    message.batch_id = "b-1\n";
    expect(errorOf("email_batch", message)?.path).toBe("batch_id");
  });

  it("counts lengths in code points like Python (an astral character is one, not two)", () => {
    const message = byName("email batch, rendered IOMAD rows with shared fan-out content");
    message.sender.name = "🎓".repeat(256); // 512 UTF-16 units, 256 code points: Python accepts it
    expect(isValid("email_batch", message)).toBe(true);
    message.sender.name += "🎓";
    expect(errorOf("email_batch", message)?.path).toBe("sender/name");
  });
});
