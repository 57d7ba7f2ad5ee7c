/**
 * Request validation for both services: every limit is checked before any work is done, and a
 * failure names the field (`user_embedding: has 3 values, the catalog's dimension is 64`).
 * Admin ads go through the same zod row schema as catalog files, so a row accepted by one path
 * is accepted by the other.
 */
import { status } from '@grpc/grpc-js';
import type { Config } from '../config/schema';
import type { RetrieveQuery } from '../pipeline/types';
import { catalogRowSchema, formatPath, type CatalogRow } from '../store/catalog-schema';
import type { AdRecord } from '../store/catalog-store';
import type { DecodedRetrieve } from './codec';

/** A gRPC status error: `{code, details}` as grpc-js expects. */
export class RpcError extends Error {
  constructor(
    readonly code: status,
    readonly details: string,
  ) {
    super(details);
  }
}

/** INVALID_ARGUMENT naming `field`. */
export function invalid(field: string, reason: string): RpcError {
  return new RpcError(status.INVALID_ARGUMENT, `${field}: ${reason}`);
}

type Limits = Config['limits'];

/**
 * Whether a decoded map lost a "__proto__" key: protobufjs assigns map entries, so that name
 * becomes the object's prototype instead of an entry (and would silently vanish).
 */
export function lostProtoKey(map: object | undefined | null): boolean {
  if (map === undefined || map === null) return false;
  const proto = Object.getPrototypeOf(map) as unknown;
  return Object.prototype.hasOwnProperty.call(map, '__proto__') || (proto !== Object.prototype && proto !== null);
}

function checkString(field: string, v: unknown, limits: Limits, options: { required?: boolean } = {}): string {
  if (v === undefined || v === null) v = '';
  if (typeof v !== 'string') throw invalid(field, 'must be a string');
  if (options.required && v.length === 0) throw invalid(field, 'is required');
  if (v.length > limits.max_string_bytes) throw invalid(field, `is longer than ${limits.max_string_bytes} characters`);
  return v;
}

function checkList(field: string, v: unknown, max: number, limits: Limits): string[] {
  const list = (v ?? []) as unknown[];
  if (!Array.isArray(list)) throw invalid(field, 'must be a list');
  if (list.length > max) throw invalid(field, `has ${list.length} entries, more than the limit of ${max}`);
  for (let i = 0; i < list.length; i++) checkString(`${field}[${i}]`, list[i], limits, { required: true });
  return list as string[];
}

/** Attribute map -> plain record, with limits. */
export function checkAttributes(field: string, v: Record<string, { values?: string[] } | undefined> | undefined, limits: Limits): Record<string, string[]> {
  const out: Record<string, string[]> = Object.create(null) as Record<string, string[]>;
  if (lostProtoKey(v)) throw invalid(field, 'the attribute name "__proto__" is not allowed');
  const entries = Object.entries(v ?? {});
  if (entries.length > limits.max_attributes) throw invalid(field, `has ${entries.length} attributes, more than the limit of ${limits.max_attributes}`);
  for (const [name, values] of entries) {
    if (name.length === 0) throw invalid(field, 'attribute names must not be empty');
    if (name.length > limits.max_string_bytes) throw invalid(`${field}`, `attribute name longer than ${limits.max_string_bytes} characters`);
    out[name] = checkList(`${field}[${JSON.stringify(name)}].values`, values?.values, limits.max_attribute_values, limits);
  }
  return out;
}

/** Validates a decoded Retrieve request against the config and the catalog's dimension. */
export function validateRetrieve(req: DecodedRetrieve, config: Config, dim: number | null, pipelineOverride?: string): RetrieveQuery {
  if (req.decodeError) throw new RpcError(status.INVALID_ARGUMENT, req.decodeError);
  const limits = config.limits;
  const requestId = checkString('request_id', req.request_id, limits);
  const userId = checkString('user_id', req.user_id, limits);
  const attributes = checkAttributes('attributes', req.attributes, limits);
  const e = req.user_embedding;
  let embedding: Float32Array | null = null;
  if (e.length > 0) {
    if (dim === null) throw invalid('user_embedding', 'the catalog is empty, so no embedding can be searched (send none)');
    if (e.length !== dim) throw invalid('user_embedding', `has ${e.length} values, the catalog's dimension is ${dim}`);
    for (let i = 0; i < e.length; i++) if (!Number.isFinite(e[i])) throw invalid(`user_embedding[${i}]`, 'must be finite (NaN or infinity)');
    embedding = e;
  }
  const n = req.num_results;
  if (!Number.isInteger(n) || n < 0) throw invalid('num_results', 'must be a non-negative integer');
  if (!Number.isSafeInteger(req.min_seq) || req.min_seq < 0) throw invalid('min_seq', 'must be a sequence number in 0..2^53-1');
  if (n > limits.max_num_results) throw invalid('num_results', `${n} is above the maximum of ${limits.max_num_results}`);
  const pipeline = checkString('pipeline', req.pipeline, limits) || pipelineOverride || config.default_pipeline;
  if (!Object.prototype.hasOwnProperty.call(config.pipelines, pipeline)) {
    throw invalid('pipeline', `unknown pipeline ${JSON.stringify(pipeline)} (have: ${Object.keys(config.pipelines).join(', ')})`);
  }
  return {
    requestId,
    userId,
    attributes,
    embedding,
    numResults: n === 0 ? limits.default_num_results : n,
    excludeAdIds: new Set(checkList('exclude_ad_ids', req.exclude_ad_ids, limits.max_exclusions, limits)),
    excludeAdvertiserIds: new Set(checkList('exclude_advertiser_ids', req.exclude_advertiser_ids, limits.max_exclusions, limits)),
    blockedCategories: new Set(checkList('blocked_categories', req.blocked_categories, limits.max_exclusions, limits)),
    pipeline,
    debug: req.debug === true,
  };
}

/** The Ad message as proto-loader gives it (int64 as decimal strings, unset optionals absent). */
export interface AdMessage {
  ad_id?: string;
  advertiser_id?: string;
  campaign_id?: string;
  category?: string;
  status?: string;
  bid_micros?: string | number;
  daily_budget_micros?: string | number;
  quality?: number;
  ctr_prior?: number;
  embedding?: number[];
  targeting?: { attributes?: Record<string, { any_of?: string[]; none_of?: string[] }> }[];
  start_time?: string;
  end_time?: string;
}

function int64(field: string, v: string | number | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = typeof v === 'number' ? v : Number(v);
  if (!Number.isSafeInteger(n)) throw invalid(field, `${String(v)} is outside the supported range (|x| <= 2^53 - 1)`);
  return n;
}

/** A proto Ad -> the catalog row object of CONTRACT section 1 (not yet validated). */
function adToRowObject(ad: AdMessage, field: string): Record<string, unknown> {
  const row: Record<string, unknown> = {
    ad_id: ad.ad_id ?? '',
    advertiser_id: ad.advertiser_id ?? '',
    campaign_id: ad.campaign_id ?? '',
    category: ad.category ?? '',
    bid_micros: int64(`${field}.bid_micros`, ad.bid_micros) ?? 0,
    embedding: ad.embedding ?? [],
  };
  if (ad.status) row.status = ad.status;
  const budget = int64(`${field}.daily_budget_micros`, ad.daily_budget_micros);
  if (budget !== undefined) row.daily_budget_micros = budget;
  if (ad.quality !== undefined) row.quality = ad.quality;
  if (ad.ctr_prior !== undefined) row.ctr_prior = ad.ctr_prior;
  if (ad.start_time) row.start_time = ad.start_time;
  if (ad.end_time) row.end_time = ad.end_time;
  if (ad.targeting && ad.targeting.length > 0) {
    // In proto an empty repeated field cannot be told from an absent one: empty = not given.
    row.targeting = ad.targeting.map((c) => {
      const conj: Record<string, { any_of?: string[]; none_of?: string[] }> = {};
      for (const [name, p] of Object.entries(c.attributes ?? {})) {
        const pred: { any_of?: string[]; none_of?: string[] } = {};
        if (p?.any_of && p.any_of.length > 0) pred.any_of = p.any_of;
        if (p?.none_of && p.none_of.length > 0) pred.none_of = p.none_of;
        conj[name] = pred;
      }
      return conj;
    });
  }
  return row;
}

/** Maps a catalog-row field path to the proto field path (targeting[0].country -> targeting[0].attributes["country"]). */
function protoPath(path: ReadonlyArray<PropertyKey>): string {
  if (path[0] === 'targeting' && typeof path[1] === 'number' && path.length >= 3) {
    const rest = path.slice(3).map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('');
    return `targeting[${path[1]}].attributes[${JSON.stringify(String(path[2]))}]${rest}`;
  }
  return formatPath(path);
}

/** Validates UpsertAds' ads: limits, the row schema, the catalog's dimension, unique ad_ids. */
export function validateAds(ads: AdMessage[] | undefined, config: Config, dim: number | null): CatalogRow[] {
  const limits = config.limits;
  const list = ads ?? [];
  if (list.length === 0) throw invalid('ads', 'must not be empty');
  if (list.length > limits.max_batch) throw invalid('ads', `has ${list.length} ads, more than the limit of ${limits.max_batch}`);
  const rows: CatalogRow[] = [];
  const seen = new Set<string>();
  let want = dim;
  list.forEach((ad, i) => {
    const field = `ads[${i}]`;
    for (const k of ['advertiser_id', 'campaign_id', 'category'] as const) checkString(`${field}.${k}`, ad[k], limits);
    for (const [j, c] of (ad.targeting ?? []).entries()) {
      if (lostProtoKey(c.attributes)) throw invalid(`${field}.targeting[${j}].attributes`, 'the attribute name "__proto__" is not allowed');
      const attrs = Object.entries(c.attributes ?? {});
      if (attrs.length > limits.max_attributes) throw invalid(`${field}.targeting[${j}].attributes`, `more than ${limits.max_attributes} attributes`);
      for (const [name, p] of attrs) {
        const n = (p?.any_of?.length ?? 0) + (p?.none_of?.length ?? 0);
        if (n > limits.max_attribute_values) throw invalid(`${field}.targeting[${j}].attributes[${JSON.stringify(name)}]`, `more than ${limits.max_attribute_values} values`);
        for (const v of [...(p?.any_of ?? []), ...(p?.none_of ?? [])]) {
          if (v.length > limits.max_string_bytes) throw invalid(`${field}.targeting[${j}].attributes[${JSON.stringify(name)}]`, `a value is longer than ${limits.max_string_bytes} characters`);
        }
      }
    }
    const parsed = catalogRowSchema.safeParse(adToRowObject(ad, field));
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw invalid(`${field}.${protoPath(issue.path)}`, issue.message);
    }
    const row = parsed.data;
    if (want === null) want = row.embedding.length;
    if (row.embedding.length !== want) {
      throw invalid(`${field}.embedding`, `has ${row.embedding.length} values, the catalog's dimension is ${want}`);
    }
    if (seen.has(row.ad_id)) throw invalid(`${field}.ad_id`, `${row.ad_id} appears twice in the request`);
    seen.add(row.ad_id);
    rows.push(row);
  });
  return rows;
}

/** Validates a list of ad_ids (non-empty, within limits). */
export function validateAdIds(field: string, ids: string[] | undefined, config: Config): string[] {
  const list = checkList(field, ids, config.limits.max_batch, config.limits);
  if (list.length === 0) throw invalid(field, 'must not be empty');
  return list;
}

/** SetAdStatus' status. */
export function validateStatus(status: string | undefined): 'active' | 'paused' {
  if (status !== 'active' && status !== 'paused') throw invalid('status', 'must be "active" or "paused"');
  return status;
}

/** A ReportSpend entry as proto-loader decodes it. */
export interface SpendEntryMessage {
  ad_id?: string;
  spend_micros?: string;
}

/** Validates ReportSpend's entries (limits, ad_id, spend_micros in 0..2^53-1). */
export function validateSpendEntries(entries: SpendEntryMessage[] | undefined, config: Config): { ad_id: string; spend_micros: number }[] {
  const limits = config.limits;
  const list = entries ?? [];
  if (list.length === 0) throw invalid('entries', 'must not be empty');
  if (list.length > limits.max_batch) throw invalid('entries', `has ${list.length} entries, more than the limit of ${limits.max_batch}`);
  return list.map((e, i) => {
    const adId = e.ad_id ?? '';
    if (adId.length === 0) throw invalid(`entries[${i}].ad_id`, 'is required');
    if (adId.length > limits.max_string_bytes) throw invalid(`entries[${i}].ad_id`, `is longer than ${limits.max_string_bytes} characters`);
    const n = Number(e.spend_micros ?? '0');
    if (!Number.isSafeInteger(n) || n < 0) throw invalid(`entries[${i}].spend_micros`, 'must be an integer in 0..2^53-1');
    return { ad_id: adId, spend_micros: n };
  });
}

/** A RecordEvents event as proto-loader decodes it. */
export interface EventMessage {
  ad_id?: string;
  type?: string;
  timestamp_ms?: string;
  attributes?: Record<string, { values?: string[] }>;
  request_id?: string;
}

/** Validates RecordEvents' events; a timestamp of 0 becomes `now`, one more than a day ahead of it is refused. */
export function validateEvents(
  events: EventMessage[] | undefined,
  config: Config,
  now: number,
): { ad_id: string; type: 'IMPRESSION' | 'CLICK'; timestamp_ms: number; attributes: Record<string, string[]> }[] {
  const limits = config.limits;
  const list = events ?? [];
  if (list.length === 0) throw invalid('events', 'must not be empty');
  if (list.length > limits.max_batch) throw invalid('events', `has ${list.length} events, more than the limit of ${limits.max_batch}`);
  return list.map((e, i) => {
    const adId = e.ad_id ?? '';
    if (adId.length === 0) throw invalid(`events[${i}].ad_id`, 'is required');
    if (adId.length > limits.max_string_bytes) throw invalid(`events[${i}].ad_id`, `is longer than ${limits.max_string_bytes} characters`);
    if (e.type !== 'IMPRESSION' && e.type !== 'CLICK') throw invalid(`events[${i}].type`, 'must be IMPRESSION or CLICK');
    const t = Number(e.timestamp_ms ?? '0');
    if (!Number.isSafeInteger(t) || t < 0) throw invalid(`events[${i}].timestamp_ms`, 'must be epoch milliseconds >= 0');
    if (t > now + 86_400_000) throw invalid(`events[${i}].timestamp_ms`, 'is more than a day in the future');
    const attributes = checkAttributes(`events[${i}].attributes`, e.attributes, limits);
    // request_id (the Retrieve that showed the ad) is for the team's own event stream to join with the feature log: checked, not stored.
    if ((e.request_id ?? '').length > limits.max_string_bytes) throw invalid(`events[${i}].request_id`, `is longer than ${limits.max_string_bytes} characters`);
    return { ad_id: adId, type: e.type, timestamp_ms: t === 0 ? now : t, attributes };
  });
}

/** A uint64 sequence number as proto-loader gives it (a decimal string; absent = 0), within 0..2^53-1. */
export function validateSeq(field: string, v: string | number | undefined): number {
  if (v === undefined || v === '') return 0;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw invalid(field, 'must be a sequence number in 0..2^53-1');
  return n;
}

/** An AdRecord (+ embedding) -> the proto Ad. */
export function recordToAd(rec: AdRecord, embedding: Float32Array): AdMessage & Record<string, unknown> {
  const ad: AdMessage & Record<string, unknown> = {
    ad_id: rec.ad_id,
    advertiser_id: rec.advertiser_id,
    campaign_id: rec.campaign_id,
    category: rec.category,
    status: rec.status,
    bid_micros: String(rec.bid_micros),
    quality: rec.quality,
    ctr_prior: rec.ctr_prior,
    embedding: Array.from(embedding),
    targeting: (rec.targeting ?? []).map((c) => ({ attributes: c })),
    start_time: rec.start_ms === null ? '' : new Date(rec.start_ms).toISOString(),
    end_time: rec.end_ms === null ? '' : new Date(rec.end_ms).toISOString(),
  };
  if (rec.daily_budget_micros !== null) ad.daily_budget_micros = String(rec.daily_budget_micros);
  return ad;
}
