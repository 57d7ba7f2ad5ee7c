/**
 * RetrieveRequest in proto3 JSON (the request log's and `funnel eval`'s format): written with the
 * proto's field names, defaults omitted; read as proto3 JSON parsers read it (proto or
 * lowerCamelCase names, null = default, unknown fields ignored), plus the attribute shorthands
 * `{"country": ["US"]}` and `{"country": "US"}` that `funnel retrieve` accepts.
 */
import { blankRetrieve, type DecodedRetrieve } from './codec';
import { lostProtoKey } from './validate';

/** RetrieveRequest as proto3 JSON: proto field names, fields at their default omitted, the embedding as plain numbers. */
export function retrieveToJson(req: DecodedRetrieve): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (req.request_id) out.request_id = req.request_id;
  if (req.user_id) out.user_id = req.user_id;
  const names = Object.keys(req.attributes);
  if (names.length > 0) {
    const attributes: Record<string, { values: string[] }> = {};
    // defineProperty: a plain assignment of "__proto__" would set the prototype, not an entry.
    for (const k of names) Object.defineProperty(attributes, k, { value: { values: req.attributes[k].values }, enumerable: true, writable: true, configurable: true });
    out.attributes = attributes;
  }
  const e = req.user_embedding;
  if (e.length > 0) {
    // A float32 widened to a double prints as the shortest decimal that reads back to that double,
    // so Float32Array.from(JSON.parse(...)) restores the same bits (except -0, which JSON writes as 0).
    const values: Array<number | string> = new Array(e.length);
    for (let i = 0; i < e.length; i++) values[i] = Number.isFinite(e[i]) ? e[i] : Number.isNaN(e[i]) ? 'NaN' : e[i] > 0 ? 'Infinity' : '-Infinity';
    out.user_embedding = values;
  }
  if (req.num_results) out.num_results = req.num_results;
  if (req.exclude_ad_ids.length > 0) out.exclude_ad_ids = req.exclude_ad_ids;
  if (req.exclude_advertiser_ids.length > 0) out.exclude_advertiser_ids = req.exclude_advertiser_ids;
  if (req.blocked_categories.length > 0) out.blocked_categories = req.blocked_categories;
  if (req.pipeline) out.pipeline = req.pipeline;
  if (req.debug) out.debug = true;
  return out;
}

const UINT32_MAX = 4294967295;

function field(obj: Record<string, unknown>, name: string, jsonName: string): unknown {
  const hasProto = Object.prototype.hasOwnProperty.call(obj, name);
  const hasJson = name !== jsonName && Object.prototype.hasOwnProperty.call(obj, jsonName);
  if (hasProto && hasJson) throw new Error(`${name}: given twice (as ${name} and ${jsonName})`);
  const v = hasProto ? obj[name] : hasJson ? obj[jsonName] : undefined;
  return v === null ? undefined : v;
}

function str(name: string, v: unknown): string {
  if (v === undefined) return '';
  if (typeof v !== 'string') throw new Error(`${name}: must be a string`);
  return v;
}

function strings(name: string, v: unknown): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new Error(`${name}: must be a list of strings`);
  for (let i = 0; i < v.length; i++) if (typeof v[i] !== 'string') throw new Error(`${name}[${i}]: must be a string`);
  return v as string[];
}

function attributes(v: unknown): Record<string, { values: string[] }> {
  if (v === undefined) return {};
  if (typeof v !== 'object' || Array.isArray(v) || v === null) throw new Error('attributes: must be an object of attribute name to values');
  if (lostProtoKey(v)) throw new Error('attributes: the attribute name "__proto__" is not allowed');
  const out: Record<string, { values: string[] }> = {};
  for (const [k, raw] of Object.entries(v as Record<string, unknown>)) {
    const name = `attributes[${JSON.stringify(k)}]`;
    let values: string[];
    if (raw === null || raw === undefined) values = [];
    else if (typeof raw === 'string') values = [raw];
    else if (Array.isArray(raw)) values = strings(name, raw);
    else if (typeof raw === 'object') values = strings(`${name}.values`, (raw as { values?: unknown }).values ?? undefined);
    else throw new Error(`${name}: must be {"values": [...]}, a list of strings or a string`);
    out[k] = { values };
  }
  return out;
}

function embedding(v: unknown): Float32Array {
  if (v === undefined) return new Float32Array(0);
  if (!Array.isArray(v)) throw new Error('user_embedding: must be a list of numbers');
  const out = new Float32Array(v.length);
  for (let i = 0; i < v.length; i++) {
    const x = v[i] as unknown;
    // proto3 JSON also allows a float as a decimal string.
    const n = typeof x === 'number' ? x : typeof x === 'string' && x.trim() !== '' ? Number(x) : NaN;
    if (!Number.isFinite(n) || !Number.isFinite(Math.fround(n))) throw new Error(`user_embedding[${i}]: must be a finite number (float32)`);
    out[i] = n;
  }
  return out;
}

function uint32(name: string, v: unknown): number {
  if (v === undefined) return 0;
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^[0-9]+$/.test(v) ? Number(v) : NaN;
  if (!Number.isInteger(n) || n < 0 || n > UINT32_MAX) throw new Error(`${name}: must be an integer in 0..${UINT32_MAX} (a number or a decimal string)`);
  return n;
}

function bool(name: string, v: unknown): boolean {
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw new Error(`${name}: must be true or false`);
  return v;
}

/**
 * Reads a RetrieveRequest from proto3 JSON (proto or lowerCamelCase field names; `min_seq` and
 * unknown fields ignored); throws an Error whose message starts with the offending field.
 */
export function retrieveFromJson(obj: unknown): DecodedRetrieve {
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw new Error('request: must be a JSON object');
  const o = obj as Record<string, unknown>;
  return {
    ...blankRetrieve(),
    request_id: str('request_id', field(o, 'request_id', 'requestId')),
    user_id: str('user_id', field(o, 'user_id', 'userId')),
    attributes: attributes(field(o, 'attributes', 'attributes')),
    user_embedding: embedding(field(o, 'user_embedding', 'userEmbedding')),
    num_results: uint32('num_results', field(o, 'num_results', 'numResults')),
    exclude_ad_ids: strings('exclude_ad_ids', field(o, 'exclude_ad_ids', 'excludeAdIds')),
    exclude_advertiser_ids: strings('exclude_advertiser_ids', field(o, 'exclude_advertiser_ids', 'excludeAdvertiserIds')),
    blocked_categories: strings('blocked_categories', field(o, 'blocked_categories', 'blockedCategories')),
    pipeline: str('pipeline', field(o, 'pipeline', 'pipeline')),
    debug: bool('debug', field(o, 'debug', 'debug')),
  };
}
