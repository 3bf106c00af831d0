// Validate messages against THE contract schema (offload_contract/schemas/v1), the same
// file the Python side validates with. Nothing is copied: the bundler inlines the JSON.
//
// @cfworker/json-schema interprets the schema (workerd forbids eval/new Function, which
// ajv and other code-generating validators need). Each message type is compiled once, with
// the same wrapper as offload_contract/validation.py: {definitions: <all>, $ref: <type>}.

import { Validator } from "@cfworker/json-schema";
import schemaDocument from "../../offload_contract/schemas/v1/contract.schema.json";

export const CONTRACT_VERSION = 1;
export const MESSAGE_TYPES = Object.freeze(["email_batch", "certificate_batch", "result_batch", "envelope", "capabilities"]);

/** A message does not satisfy the contract. `path` points at the offending field; never the value. */
export class ContractError extends Error {
  constructor(messageType, path, reason) {
    super(`${messageType} violates contract v${CONTRACT_VERSION} at ${path}: ${reason}`);
    this.name = "ContractError";
    this.messageType = messageType;
    this.path = path;
    this.reason = reason;
  }
}

export function schemaDefinitions() {
  return schemaDocument.definitions;
}

const validators = new Map();

function validatorFor(messageType) {
  let validator = validators.get(messageType);
  if (validator) return validator;
  if (!MESSAGE_TYPES.includes(messageType)) {
    throw new TypeError(`unknown message type ${JSON.stringify(messageType)}; expected one of ${MESSAGE_TYPES}`);
  }
  const wrapper = {
    $schema: "http://json-schema.org/draft-07/schema#",
    // The validator annotates schema objects in place; a private copy keeps the imported
    // module object pristine and the per-type validators independent.
    definitions: structuredClone(schemaDocument.definitions),
    $ref: `#/definitions/${messageType}`,
  };
  validator = new Validator(wrapper, "7", true);
  validators.set(messageType, validator);
  return validator;
}

// Keywords that only say "something below failed"; the rule worth reporting is deeper.
const STRUCTURAL = new Set([
  "$ref",
  "properties",
  "patternProperties",
  "additionalProperties",
  "items",
  "additionalItems",
  "allOf",
  "if",
  "then",
  "else",
  "propertyNames",
  "dependencies",
  "contains",
]);

function pointerToPath(instanceLocation) {
  const parts = instanceLocation.replace(/^#\/?/, "");
  if (!parts) return "(root)";
  return parts
    .split("/")
    .map((part) => {
      let decoded = part;
      try {
        decoded = decodeURI(part);
      } catch {
        // keep the raw segment
      }
      return decoded.replace(/%23/g, "#").replace(/~1/g, "/").replace(/~0/g, "~");
    })
    .join("/");
}

/**
 * Pick the error that names the failing rule: the first non-structural one. A `false`
 * schema (an unknown property under additionalProperties: false) is reported as its
 * parent's rule at the parent's path, as the Python validator does.
 */
function firstRule(errors) {
  for (let i = 0; i < errors.length; i++) {
    const error = errors[i];
    if (error.keyword === "false") {
      const parent = errors[i - 1];
      if (parent) return { path: pointerToPath(parent.instanceLocation), rule: parent.keyword };
      return { path: pointerToPath(error.instanceLocation), rule: "false" };
    }
    if (!STRUCTURAL.has(error.keyword)) {
      return { path: pointerToPath(error.instanceLocation), rule: error.keyword };
    }
  }
  const last = errors[errors.length - 1];
  return last ? { path: pointerToPath(last.instanceLocation), rule: last.keyword } : { path: "(root)", rule: "schema" };
}

/**
 * Throw ContractError unless `message` is a valid `messageType`.
 *
 * Reasons quote field names and rules, never field values: messages carry bodies and
 * temporary passwords, which must not reach logs through an exception.
 */
export function validate(messageType, message) {
  const result = validatorFor(messageType).validate(message);
  if (result.valid) return;
  const { path, rule } = firstRule(result.errors);
  throw new ContractError(messageType, path, `fails rule '${rule}'`);
}

/** True when `message` is a valid `messageType`. */
export function isValid(messageType, message) {
  return validatorFor(messageType).validate(message).valid;
}
