/**
 * The catalog row of CONTRACT section 1, validated with zod. Unknown fields are ignored (other
 * services may add fields); every known field is checked, and a failure names the field path.
 */
import { z } from 'zod';

/** Largest embedding dimension accepted. */
export const MAX_DIM = 4096;

/** What an ad_id may be (CONTRACT section 1): 1-128 characters of [A-Za-z0-9._:/-]. */
export const AD_ID = /^[A-Za-z0-9._:/-]{1,128}$/;
// RFC 3339 date-time: full date, 'T' (or 't' / space), time with optional fraction, and a zone.
const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

const text = (max: number) => z.string().min(1, 'must not be empty').max(max, `must be at most ${max} characters`);
const unit = z.number().min(0, 'must be in [0, 1]').max(1, 'must be in [0, 1]');
const micros = z.number().int('must be an integer').min(0, 'must be >= 0').max(Number.MAX_SAFE_INTEGER);
const rfc3339 = z
  .string()
  .regex(RFC3339, 'must be an RFC 3339 date-time such as 2026-01-31T00:00:00Z')
  .refine((s) => !RFC3339.test(s) || Number.isFinite(Date.parse(s)), 'is not a valid date-time');

/** `{any_of?: [...], none_of?: [...]}`, at least one of them. */
export const predicateSchema = z
  .object({
    any_of: z.array(z.string()).optional(),
    none_of: z.array(z.string()).optional(),
  })
  .strict()
  .refine((p) => p.any_of !== undefined || p.none_of !== undefined, 'a predicate needs any_of or none_of');

/** A conjunction: attribute name -> predicate; `{}` holds always. */
export const conjunctionSchema = z.record(z.string().min(1, 'attribute names must not be empty'), predicateSchema);

/** DNF targeting: a non-empty list of conjunctions. */
export const targetingSchema = z.array(conjunctionSchema).min(1, 'an empty targeting list is an error (omit it to target everyone)');

/** One catalog row as written in the JSONL file. */
export const catalogRowSchema = z
  .object({
    ad_id: z.string().regex(AD_ID, 'must be 1-128 characters of [A-Za-z0-9._:/-]'),
    advertiser_id: text(256),
    campaign_id: text(256),
    category: text(128),
    status: z.enum(['active', 'paused']).default('active'),
    bid_micros: micros,
    daily_budget_micros: micros.optional(),
    quality: unit.default(0.5),
    ctr_prior: unit.default(0.01),
    embedding: z
      .array(z.number().refine(Number.isFinite, 'must be finite'))
      .min(1, `must have 1..${MAX_DIM} values`)
      .max(MAX_DIM, `must have 1..${MAX_DIM} values`),
    targeting: targetingSchema.optional(),
    start_time: rfc3339.optional(),
    end_time: rfc3339.optional(),
  })
  .refine((r) => !r.start_time || !r.end_time || Date.parse(r.end_time) > Date.parse(r.start_time), {
    message: 'must be after start_time',
    path: ['end_time'],
  });

/** A validated row with defaults filled in. */
export type CatalogRow = z.infer<typeof catalogRowSchema>;
/** A validated predicate. */
export type Predicate = z.infer<typeof predicateSchema>;
/** A validated conjunction. */
export type Conjunction = z.infer<typeof conjunctionSchema>;

/** One problem in a row: the field path (dotted, with [i] for list positions) and the reason. */
export interface RowIssue {
  field: string;
  reason: string;
}

/** Formats a zod path as `targeting[0].country.any_of`. */
export function formatPath(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else out += out === '' ? String(p) : `.${String(p)}`;
  }
  return out === '' ? '(row)' : out;
}

/**
 * Parses and validates one JSONL line. Returns the row, or the issues found (JSON syntax errors
 * come back as one issue on field "(row)"). `dim`, when given, is the required embedding length.
 */
export function parseCatalogLine(line: string, dim?: number): { row: CatalogRow } | { issues: RowIssue[] } {
  let json: unknown;
  try {
    json = JSON.parse(line);
  } catch (err) {
    return { issues: [{ field: '(row)', reason: `invalid JSON: ${(err as Error).message}` }] };
  }
  return parseCatalogObject(json, dim);
}

/** Validates one parsed catalog row (a JSON value), as parseCatalogLine does after JSON.parse. */
export function parseCatalogObject(json: unknown, dim?: number): { row: CatalogRow } | { issues: RowIssue[] } {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    return { issues: [{ field: '(row)', reason: 'must be a JSON object' }] };
  }
  // JSON.parse keeps "__proto__" as an own key, but any object rebuilt from it (zod's record
  // included) turns it into a prototype and drops it, which would widen the ad's targeting.
  const targeting = (json as { targeting?: unknown }).targeting;
  if (Array.isArray(targeting)) {
    for (let i = 0; i < targeting.length; i++) {
      const c = targeting[i] as object | null;
      if (c !== null && typeof c === 'object' && Object.prototype.hasOwnProperty.call(c, '__proto__')) {
        return { issues: [{ field: `targeting[${i}]`, reason: 'the attribute name "__proto__" is not allowed' }] };
      }
    }
  }
  const parsed = catalogRowSchema.safeParse(json);
  if (!parsed.success) {
    return { issues: parsed.error.issues.map((i) => ({ field: formatPath(i.path), reason: i.message })) };
  }
  if (dim !== undefined && parsed.data.embedding.length !== dim) {
    return {
      issues: [{ field: 'embedding', reason: `has ${parsed.data.embedding.length} values, but the catalog's dimension is ${dim}` }],
    };
  }
  return { row: parsed.data };
}
