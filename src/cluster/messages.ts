/**
 * The messages of the replicated write stream (one JetStream subject per shard). Each is one
 * JSON object, version 1; embeddings travel as base64 of little-endian float32 (exact, and a
 * third of the size of decimal text). A replica validates every message in full before it
 * applies any of it: a message that fails is parked (logged, counted, stored), never applied
 * in part.
 *
 *   upsert        {ads: [catalog row, with embedding_f32 in place of embedding]}
 *   status        {ad_ids, status: active|paused}
 *   delete        {ad_ids}
 *   spend         {entries: [{ad_id, spend_micros}], time_ms}   (the day is time_ms's UTC day)
 *   events        {events: [{ad_id, type, timestamp_ms, attributes}]}
 *   ingest_begin  {ingest, rows, replace, ann?}      a file's part for this shard starts
 *   ingest_chunk  {ingest, chunk, ads}                staged, invisible until the commit
 *   ingest_commit {ingest, chunks, rows}              every staged row applied in one transaction
 */
import { z } from 'zod';
import { AD_ID, parseCatalogObject, type CatalogRow, type RowIssue } from '../store/catalog-schema';

export const MESSAGE_VERSION = 1;

const adId = z.string().regex(AD_ID, 'must be 1-128 characters of [A-Za-z0-9._:/-]');
const adIds = z.array(adId).min(1, 'must not be empty');
const nonNegInt = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const ingestId = z.string().min(1).max(128);

const envelope = <K extends string, S extends z.ZodRawShape>(kind: K, shape: S) =>
  z.object({ v: z.literal(MESSAGE_VERSION), kind: z.literal(kind), ...shape }).strict();

const wireRows = z.array(z.record(z.string(), z.unknown()));

export const streamMessageSchema = z.discriminatedUnion('kind', [
  envelope('upsert', { ads: wireRows.min(1, 'must not be empty') }),
  envelope('status', { ad_ids: adIds, status: z.enum(['active', 'paused']) }),
  envelope('delete', { ad_ids: adIds }),
  envelope('spend', { entries: z.array(z.object({ ad_id: adId, spend_micros: nonNegInt }).strict()).min(1), time_ms: nonNegInt }),
  envelope('events', {
    events: z
      .array(
        z
          .object({
            ad_id: adId,
            type: z.enum(['IMPRESSION', 'CLICK']),
            timestamp_ms: nonNegInt,
            attributes: z.record(z.string(), z.array(z.string())),
          })
          .strict(),
      )
      .min(1),
  }),
  envelope('ingest_begin', {
    ingest: ingestId,
    rows: nonNegInt,
    replace: z.boolean(),
    /** ANN settings for a new or replaced catalog (as `funnel ingest --metric --ann-m --ann-ef-construction`). */
    ann: z
      .object({ metric: z.enum(['ip', 'cos', 'l2']), M: z.number().int().min(2).max(128), efConstruction: z.number().int().min(1).max(4096) })
      .partial()
      .strict()
      .optional(),
  }),
  envelope('ingest_chunk', { ingest: ingestId, chunk: nonNegInt, ads: wireRows }),
  envelope('ingest_commit', { ingest: ingestId, chunks: nonNegInt, rows: nonNegInt }),
]);

type Wire = z.infer<typeof streamMessageSchema>;

/** A decoded, validated message: rows are catalog rows (embedding as numbers). */
export type StreamMessage =
  | { kind: 'upsert'; ads: CatalogRow[] }
  | Omit<Extract<Wire, { kind: 'status' }>, 'v'>
  | Omit<Extract<Wire, { kind: 'delete' }>, 'v'>
  | Omit<Extract<Wire, { kind: 'spend' }>, 'v'>
  | Omit<Extract<Wire, { kind: 'events' }>, 'v'>
  | Omit<Extract<Wire, { kind: 'ingest_begin' }>, 'v'>
  | Omit<Extract<Wire, { kind: 'ingest_commit' }>, 'v'>
  | { kind: 'ingest_chunk'; ingest: string; chunk: number; ads: CatalogRow[] };

/** A message that cannot be applied: why (a short code for the metric) and where. */
export class BadMessage extends Error {
  constructor(
    readonly reason: 'json' | 'schema' | 'row' | 'dimension' | 'sequence',
    message: string,
  ) {
    super(message);
  }
}

/** base64 of the float32 values, little-endian. */
export function encodeEmbedding(values: ArrayLike<number>): string {
  const f = Float32Array.from(values as ArrayLike<number>);
  return Buffer.from(f.buffer, f.byteOffset, f.byteLength).toString('base64');
}

/** The float32 values of a base64 string (throws on a length that is not a multiple of 4). */
export function decodeEmbedding(b64: string): number[] {
  const buf = Buffer.from(b64, 'base64');
  if (buf.length % 4 !== 0 || buf.length === 0) throw new Error(`has ${buf.length} bytes, not a non-empty multiple of 4`);
  const out = new Array<number>(buf.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = buf.readFloatLE(i * 4);
  return out;
}

/** A catalog row as it travels: `embedding_f32` (base64) in place of `embedding`. */
export function rowToWire(row: CatalogRow): Record<string, unknown> {
  const { embedding, ...rest } = row;
  return { ...rest, embedding_f32: encodeEmbedding(embedding) };
}

/** Encodes a message (rows as catalog rows). */
export function encodeMessage(msg: StreamMessage): Uint8Array {
  let wire: Record<string, unknown>;
  if (msg.kind === 'upsert' || msg.kind === 'ingest_chunk') wire = { ...msg, v: MESSAGE_VERSION, ads: msg.ads.map(rowToWire) };
  else wire = { ...msg, v: MESSAGE_VERSION };
  return Buffer.from(JSON.stringify(wire), 'utf8');
}

/**
 * An `ingest_chunk` message from rows already in wire JSON (JSON.stringify of rowToWire): the
 * publisher sizes its chunks by those strings, so each row is encoded once. Decodes as
 * encodeMessage's would.
 */
export function encodeChunk(ingest: string, chunk: number, wireRows: readonly string[]): Uint8Array {
  return Buffer.from(`{"v":${MESSAGE_VERSION},"kind":"ingest_chunk","ingest":${JSON.stringify(ingest)},"chunk":${chunk},"ads":[${wireRows.join(',')}]}`, 'utf8');
}

function rowsFromWire(field: string, rows: ReadonlyArray<Record<string, unknown>>, dim: number | undefined): CatalogRow[] {
  const out: CatalogRow[] = [];
  const seen = new Set<string>();
  rows.forEach((w, i) => {
    const { embedding_f32, ...rest } = w;
    let embedding: unknown = rest.embedding;
    if (typeof embedding_f32 === 'string') {
      try {
        embedding = decodeEmbedding(embedding_f32);
      } catch (err) {
        throw new BadMessage('row', `${field}[${i}].embedding_f32: ${(err as Error).message}`);
      }
    }
    const parsed = parseCatalogObject({ ...rest, embedding }, undefined);
    if ('issues' in parsed) {
      const first: RowIssue = parsed.issues[0];
      throw new BadMessage('row', `${field}[${i}].${first.field}: ${first.reason}`);
    }
    if (dim !== undefined && parsed.row.embedding.length !== dim) {
      throw new BadMessage('dimension', `${field}[${i}].embedding: has ${parsed.row.embedding.length} values, the catalog's dimension is ${dim}`);
    }
    if (seen.has(parsed.row.ad_id)) throw new BadMessage('row', `${field}[${i}].ad_id: ${parsed.row.ad_id} appears twice`);
    seen.add(parsed.row.ad_id);
    out.push(parsed.row);
  });
  return out;
}

/**
 * Decodes and validates a message in full. `dim` (the catalog's dimension, when it has one)
 * is checked for every row. Throws BadMessage naming the field.
 */
export function decodeMessage(data: Uint8Array, dim?: number | null): StreamMessage {
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('utf8'));
  } catch (err) {
    throw new BadMessage('json', `invalid JSON: ${(err as Error).message}`);
  }
  const parsed = streamMessageSchema.safeParse(json);
  if (!parsed.success) {
    const i = parsed.error.issues[0];
    throw new BadMessage('schema', `${i.path.map(String).join('.') || '(message)'}: ${i.message}`);
  }
  const m = parsed.data;
  const d = dim ?? undefined;
  if (m.kind === 'upsert') return { kind: 'upsert', ads: rowsFromWire('ads', m.ads, d) };
  if (m.kind === 'ingest_chunk') return { kind: 'ingest_chunk', ingest: m.ingest, chunk: m.chunk, ads: rowsFromWire('ads', m.ads, undefined) };
  const { v: _v, ...rest } = m;
  return rest as StreamMessage;
}
