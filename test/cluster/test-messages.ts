import { strict as assert } from 'node:assert';
import { BadMessage, decodeEmbedding, decodeMessage, encodeChunk, encodeEmbedding, encodeMessage, rowToWire, type StreamMessage } from '../../src/cluster/messages';
import { parseCatalogObject, type CatalogRow } from '../../src/store/catalog-schema';
import { row } from '../fixtures/catalog';

function catalogRow(n: number, extra: Record<string, unknown> = {}): CatalogRow {
  const r = parseCatalogObject(row(n, 4, extra));
  if ('issues' in r) throw new Error(JSON.stringify(r.issues));
  return r.row;
}

function raw(o: unknown): Uint8Array {
  return Buffer.from(JSON.stringify(o));
}

function bad(data: Uint8Array, dim?: number): BadMessage {
  try {
    decodeMessage(data, dim);
  } catch (err) {
    assert.ok(err instanceof BadMessage, String(err));
    return err;
  }
  assert.fail('decoded a bad message');
}

describe('cluster/messages', () => {
  it('when an embedding travels as base64 float32, then it comes back exact to float32', () => {
    const v = [0.1, -2.5, 3.14159, 1e-8];
    const back = decodeEmbedding(encodeEmbedding(v));
    assert.deepEqual(back, Array.from(Float32Array.from(v)));
    assert.throws(() => decodeEmbedding(Buffer.from([1, 2, 3]).toString('base64')), /multiple of 4/);
  });

  it('when every kind of message is encoded and decoded, then it comes back the same (rows as validated catalog rows)', () => {
    const rows = [catalogRow(1, { targeting: [{ country: { any_of: ['US'] } }], end_time: '2030-01-01T00:00:00Z' }), catalogRow(2)];
    const msgs: StreamMessage[] = [
      { kind: 'upsert', ads: rows },
      { kind: 'status', ad_ids: ['ad-1'], status: 'paused' },
      { kind: 'delete', ad_ids: ['ad-1', 'ad-2'] },
      { kind: 'spend', entries: [{ ad_id: 'ad-1', spend_micros: 5 }], time_ms: 1_700_000_000_000 },
      { kind: 'events', events: [{ ad_id: 'ad-2', type: 'CLICK', timestamp_ms: 1, attributes: { country: ['US'] } }] },
      { kind: 'ingest_begin', ingest: 'i1', rows: 2, replace: true, ann: { metric: 'cos', M: 8 } },
      { kind: 'ingest_chunk', ingest: 'i1', chunk: 0, ads: rows },
      { kind: 'ingest_commit', ingest: 'i1', chunks: 1, rows: 2 },
    ];
    for (const m of msgs) {
      const back = decodeMessage(encodeMessage(m), 4);
      const want = m.kind === 'upsert' || m.kind === 'ingest_chunk' ? { ...m, ads: m.ads.map((r) => ({ ...r, embedding: Array.from(Float32Array.from(r.embedding)) })) } : m;
      assert.deepEqual(back, want, m.kind);
    }
  });

  it('when a chunk is built from rows already in wire JSON, then it decodes as the same chunk encodeMessage makes', () => {
    const rows = [catalogRow(1), catalogRow(2, { targeting: [{ country: { none_of: ['DE'] } }] })];
    const direct = decodeMessage(encodeMessage({ kind: 'ingest_chunk', ingest: 'i"1', chunk: 3, ads: rows }));
    const fromWire = decodeMessage(encodeChunk('i"1', 3, rows.map((r) => JSON.stringify(rowToWire(r)))));
    assert.deepEqual(fromWire, direct);
  });

  it('when a message is not JSON, has an unknown kind, a missing field or a bad version, then it is refused with a reason and the field', () => {
    assert.equal(bad(Buffer.from('not json')).reason, 'json');
    assert.equal(bad(raw({ v: 1, kind: 'explode' })).reason, 'schema');
    const missing = bad(raw({ v: 1, kind: 'status', ad_ids: ['a'] }));
    assert.equal(missing.reason, 'schema');
    assert.match(missing.message, /^status:/);
    assert.equal(bad(raw({ v: 2, kind: 'delete', ad_ids: ['a'] })).reason, 'schema');
    assert.match(bad(raw({ v: 1, kind: 'delete', ad_ids: ['bad id with spaces'] })).message, /^ad_ids\.0:/);
    assert.equal(bad(raw({ v: 1, kind: 'delete', ad_ids: ['a'], extra: 1 })).reason, 'schema');
  });

  it('when a row in a message is invalid, then the whole message is refused naming the row and field, and nothing of it is returned', () => {
    const good = encodeMessage({ kind: 'upsert', ads: [catalogRow(1)] });
    const wire = JSON.parse(Buffer.from(good).toString()) as { ads: Record<string, unknown>[] };
    wire.ads.push({ ...wire.ads[0], ad_id: 'ad-9', bid_micros: -1 });
    const e = bad(raw(wire));
    assert.equal(e.reason, 'row');
    assert.match(e.message, /^ads\[1\]\.bid_micros: /);
    wire.ads[1] = { ...wire.ads[0] };
    assert.match(bad(raw(wire)).message, /ads\[1\]\.ad_id: ad-1 appears twice/);
    wire.ads[1] = { ...wire.ads[0], ad_id: 'ad-9', embedding_f32: 'AAA' };
    assert.match(bad(raw(wire)).message, /^ads\[1\]\.embedding_f32: /);
  });

  it('when an upsert row has another dimension than the catalog, then it is refused as a dimension problem', () => {
    const m = encodeMessage({ kind: 'upsert', ads: [catalogRow(1)] });
    assert.equal(bad(m, 8).reason, 'dimension');
    assert.doesNotThrow(() => decodeMessage(m, null));
  });
});
