/**
 * Decoding of RetrieveRequest with the user embedding copied once: the packed `repeated float`
 * field is read as the raw bytes it is on the wire (a view of the received buffer, through a
 * shadow message type declaring field 4 as `bytes`), then copied once into the Float32Array the
 * addon reads. Unpacked or split encodings (legal, rare) take the ordinary decode.
 */
import * as os from 'node:os';
import * as protobuf from 'protobufjs';
import { protoRoot } from './proto';
import { lostProtoKey } from './validate';

/** A decoded Retrieve request: plain fields plus the embedding, or why it could not be read. */
export interface DecodedRetrieve {
  request_id: string;
  user_id: string;
  attributes: Record<string, { values: string[] }>;
  user_embedding: Float32Array;
  num_results: number;
  exclude_ad_ids: string[];
  exclude_advertiser_ids: string[];
  blocked_categories: string[];
  pipeline: string;
  debug: boolean;
  /** Consistency token (0 = none); past 2^53 it reads as NaN and is refused by validation. */
  min_seq: number;
  /** Set when the bytes are not a valid RetrieveRequest (answered INVALID_ARGUMENT). */
  decodeError?: string;
}

const LITTLE_ENDIAN = os.endianness() === 'LE';
let full: protobuf.Type | undefined;
let wire: protobuf.Type | undefined;

function types(): { full: protobuf.Type; wire: protobuf.Type } {
  if (!full || !wire) {
    const root = protoRoot();
    full = root.lookupType('funnel.v1.RetrieveRequest');
    const json = full.toJSON() as { fields: Record<string, { type: string; id: number; rule?: string; keyType?: string }> };
    json.fields.user_embedding = { type: 'bytes', id: 4 };
    const ns = root.lookup('funnel.v1') as protobuf.Namespace;
    wire = (ns.get('RetrieveRequestWire') as protobuf.Type | null) ?? protobuf.Type.fromJSON('RetrieveRequestWire', json);
    if (!ns.get('RetrieveRequestWire')) ns.add(wire);
    root.resolveAll();
  }
  return { full, wire };
}

/** The shadow type's message: the same fields, with the embedding as its raw packed bytes. */
type WireMessage = Omit<DecodedRetrieve, 'user_embedding' | 'decodeError'> & { user_embedding: Uint8Array };

/** A RetrieveRequest with every field at its proto3 default. */
export function blankRetrieve(): DecodedRetrieve {
  return {
    request_id: '',
    user_id: '',
    attributes: {},
    user_embedding: new Float32Array(0),
    num_results: 0,
    exclude_ad_ids: [],
    exclude_advertiser_ids: [],
    blocked_categories: [],
    pipeline: '',
    debug: false,
    min_seq: 0,
  };
}

function empty(error: string): DecodedRetrieve {
  return { ...blankRetrieve(), decodeError: error };
}

/** Field 4 occurrences and whether any is unpacked (wire type 5). */
function scanEmbedding(buf: Uint8Array): { chunks: number; unpacked: boolean } {
  const r = protobuf.Reader.create(buf);
  let chunks = 0;
  let unpacked = false;
  while (r.pos < r.len) {
    const tag = r.uint32();
    if (tag >>> 3 === 4) {
      if ((tag & 7) === 5) unpacked = true;
      chunks++;
    }
    r.skipType(tag & 7);
  }
  return { chunks, unpacked };
}

function plain(m: Omit<WireMessage, 'user_embedding'>, embedding: Float32Array): DecodedRetrieve {
  if (lostProtoKey(m.attributes)) return empty('attributes: the attribute name "__proto__" is not allowed');
  const attributes: Record<string, { values: string[] }> = {};
  for (const [k, v] of Object.entries(m.attributes ?? {})) attributes[k] = { values: v?.values ?? [] };
  return {
    request_id: m.request_id ?? '',
    user_id: m.user_id ?? '',
    attributes,
    user_embedding: embedding,
    num_results: m.num_results ?? 0,
    exclude_ad_ids: m.exclude_ad_ids ?? [],
    exclude_advertiser_ids: m.exclude_advertiser_ids ?? [],
    blocked_categories: m.blocked_categories ?? [],
    pipeline: m.pipeline ?? '',
    debug: m.debug ?? false,
    min_seq: uint64(m.min_seq),
  };
}

/** A uint64 as protobufjs hands it (number, or a Long-like object) as a number; NaN past 2^53 - 1. */
function uint64(v: unknown): number {
  if (v === undefined || v === null) return 0;
  const n = typeof v === 'number' ? v : Number(String(v));
  return Number.isSafeInteger(n) ? n : NaN;
}

/** Decodes a RetrieveRequest; never throws (a bad message comes back with `decodeError`). */
export function decodeRetrieveRequest(buf: Uint8Array): DecodedRetrieve {
  try {
    const t = types();
    const scan = scanEmbedding(buf);
    if (scan.unpacked || scan.chunks > 1 || !LITTLE_ENDIAN) {
      const m = t.full.decode(buf) as unknown as Omit<WireMessage, 'user_embedding'> & { user_embedding: number[] };
      return plain(m, Float32Array.from(m.user_embedding ?? []));
    }
    const m = t.wire.decode(buf) as unknown as WireMessage;
    const bytes = m.user_embedding ?? new Uint8Array(0);
    if (bytes.length % 4 !== 0) return empty('user_embedding: packed floats are not a multiple of 4 bytes');
    const embedding = new Float32Array(bytes.length / 4);
    new Uint8Array(embedding.buffer).set(bytes);
    return plain(m, embedding);
  } catch (err) {
    return empty(`malformed RetrieveRequest: ${(err as Error).message}`);
  }
}

/** Encodes a RetrieveRequest from plain fields (clients, benchmarks, tests). */
export function encodeRetrieveRequest(req: Partial<Omit<DecodedRetrieve, 'user_embedding' | 'decodeError'>> & { user_embedding?: ArrayLike<number> }): Buffer {
  const t = types().full;
  const msg = t.fromObject({ ...req, user_embedding: req.user_embedding ? Array.from(req.user_embedding) : [] });
  return Buffer.from(t.encode(msg).finish());
}

/** The RetrieveResponse message as the handlers build it (proto field names; data_seq a decimal string). */
export interface RetrieveResponseMessage {
  candidates: { ad_id: string; advertiser_id: string; campaign_id: string; category: string; score: number; sources: string[] }[];
  degraded: boolean;
  degraded_stages: string[];
  stages: {
    name: string;
    candidates_in: number;
    candidates_out: number;
    latency_ms: number;
    status: string;
    detail: string;
    dropped: Record<string, number>;
  }[];
  request_id: string;
  pipeline: string;
  data_seq: string;
}

// Tags of RetrieveResponse and its nested messages: (field number << 3) | wire type.
const LEN = 2;
const VARINT = 0;
const I64 = 1;
const tag = (field: number, wire: number) => (field << 3) | wire;

/**
 * Encodes a RetrieveResponse straight into protobuf bytes, as protobufjs's fromObject + encode
 * would (same field order, proto3 defaults omitted), without building the intermediate message
 * objects: the answer of every Retrieve goes through here.
 */
export function encodeRetrieveResponse(m: RetrieveResponseMessage): Buffer {
  const w = protobuf.Writer.create();
  for (const c of m.candidates) {
    w.uint32(tag(1, LEN)).fork();
    if (c.ad_id !== '') w.uint32(tag(1, LEN)).string(c.ad_id);
    if (c.advertiser_id !== '') w.uint32(tag(2, LEN)).string(c.advertiser_id);
    if (c.campaign_id !== '') w.uint32(tag(3, LEN)).string(c.campaign_id);
    if (c.category !== '') w.uint32(tag(4, LEN)).string(c.category);
    if (c.score !== 0 || Object.is(c.score, -0)) w.uint32(tag(5, I64)).double(c.score);
    for (const s of c.sources) w.uint32(tag(6, LEN)).string(s);
    w.ldelim();
  }
  if (m.degraded) w.uint32(tag(2, VARINT)).bool(true);
  for (const s of m.degraded_stages) w.uint32(tag(3, LEN)).string(s);
  for (const s of m.stages) {
    w.uint32(tag(4, LEN)).fork();
    if (s.name !== '') w.uint32(tag(1, LEN)).string(s.name);
    if (s.candidates_in !== 0) w.uint32(tag(2, VARINT)).uint32(s.candidates_in);
    if (s.candidates_out !== 0) w.uint32(tag(3, VARINT)).uint32(s.candidates_out);
    if (s.latency_ms !== 0 || Object.is(s.latency_ms, -0)) w.uint32(tag(4, I64)).double(s.latency_ms);
    if (s.status !== '') w.uint32(tag(5, LEN)).string(s.status);
    if (s.detail !== '') w.uint32(tag(6, LEN)).string(s.detail);
    for (const k of Object.keys(s.dropped)) {
      // A map entry is a nested message {1: key, 2: value}; protobufjs writes both, defaults too.
      w.uint32(tag(7, LEN)).fork().uint32(tag(1, LEN)).string(k).uint32(tag(2, VARINT)).uint32(s.dropped[k]).ldelim();
    }
    w.ldelim();
  }
  if (m.request_id !== '') w.uint32(tag(5, LEN)).string(m.request_id);
  if (m.pipeline !== '') w.uint32(tag(6, LEN)).string(m.pipeline);
  if (m.data_seq !== '' && m.data_seq !== '0') w.uint32(tag(7, VARINT)).uint64(m.data_seq);
  return Buffer.from(w.finish());
}

let responseType: protobuf.Type | undefined;

/**
 * Decodes a RetrieveResponse (a shard's answer at the root) straight into the plain shape
 * encodeRetrieveResponse takes, without proto-loader's object conversion. Throws on bad bytes.
 */
export function decodeRetrieveResponse(buf: Uint8Array): RetrieveResponseMessage {
  responseType ??= protoRoot().lookupType('funnel.v1.RetrieveResponse');
  const m = responseType.decode(buf) as unknown as {
    candidates: { ad_id: string; advertiser_id: string; campaign_id: string; category: string; score: number; sources: string[] }[];
    degraded: boolean;
    degraded_stages: string[];
    stages: { name: string; candidates_in: number; candidates_out: number; latency_ms: number; status: string; detail: string; dropped: Record<string, number> }[];
    request_id: string;
    pipeline: string;
    data_seq: unknown;
  };
  return {
    candidates: m.candidates.map((c) => ({ ad_id: c.ad_id, advertiser_id: c.advertiser_id, campaign_id: c.campaign_id, category: c.category, score: c.score, sources: c.sources })),
    degraded: m.degraded,
    degraded_stages: m.degraded_stages,
    stages: m.stages.map((x) => ({ name: x.name, candidates_in: x.candidates_in, candidates_out: x.candidates_out, latency_ms: x.latency_ms, status: x.status, detail: x.detail, dropped: { ...x.dropped } })),
    request_id: m.request_id,
    pipeline: m.pipeline,
    data_seq: String(uint64(m.data_seq)),
  };
}

/** `raw` (an encoded RetrieveRequest) with num_results set to `n`: a later occurrence of a scalar field wins. */
export function withNumResults(raw: Uint8Array, n: number): Buffer {
  const w = protobuf.Writer.create();
  w.uint32(tag(5, VARINT)).uint32(n);
  return Buffer.concat([raw, w.finish()]);
}
