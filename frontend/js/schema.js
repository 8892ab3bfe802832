// The names the API accepts (strategies, proxy architectures), read from its own OpenAPI schema
// so the forms never drift from the server's validation.

import { get } from "./api.js";

let schema = null;

async function components() {
  if (!schema) schema = get("/openapi.json").then((s) => s.components.schemas);
  return schema;
}

/** The enum of a property of a schema, through `anyOf` (an optional field) if need be. */
export async function enumOf(schemaName, property) {
  const prop = (await components())[schemaName]?.properties?.[property] || {};
  const found = prop.enum || (prop.anyOf || []).map((p) => p.enum).find(Boolean);
  return found ? [...found] : [];
}
