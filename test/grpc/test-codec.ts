import { strict as assert } from 'node:assert';
import * as protobuf from 'protobufjs';
import fc from 'fast-check';
import { decodeRetrieveRequest, encodeRetrieveRequest, encodeRetrieveResponse } from '../../src/grpc/codec';
import { protoRoot } from '../../src/grpc/proto';

describe('Retrieve codec', () => {
  it('when the embedding is packed, then it decodes to the same floats in a Float32Array', () => {
    const emb = [0.5, -1.25, 3e-7, 1e30];
    const buf = encodeRetrieveRequest({
      request_id: 'r1',
      user_id: 'u',
      attributes: { country: { values: ['US', 'CA'] } },
      user_embedding: emb,
      num_results: 7,
      exclude_ad_ids: ['a'],
      pipeline: 'p',
      debug: true,
    });
    const d = decodeRetrieveRequest(buf);
    assert.equal(d.decodeError, undefined);
    assert.ok(d.user_embedding instanceof Float32Array);
    assert.deepEqual(Array.from(d.user_embedding), Array.from(Float32Array.from(emb)));
    assert.equal(d.request_id, 'r1');
    assert.deepEqual(d.attributes.country.values, ['US', 'CA']);
    assert.equal(d.num_results, 7);
    assert.deepEqual(d.exclude_ad_ids, ['a']);
    assert.equal(d.debug, true);
  });

  it('when the embedding is sent unpacked or split in two packed runs, then it decodes the same', () => {
    const w = protobuf.Writer.create();
    w.uint32((1 << 3) | 2).string('r2');
    for (const x of [1, 2, 3]) w.uint32((4 << 3) | 5).float(x);
    assert.deepEqual(Array.from(decodeRetrieveRequest(w.finish()).user_embedding), [1, 2, 3]);
    const s = protobuf.Writer.create();
    s.uint32((4 << 3) | 2).fork().float(1).float(2).ldelim();
    s.uint32((4 << 3) | 2).fork().float(3).ldelim();
    assert.deepEqual(Array.from(decodeRetrieveRequest(s.finish()).user_embedding), [1, 2, 3]);
  });

  it('when the bytes are not a RetrieveRequest, then decodeError says so instead of throwing', () => {
    const d = decodeRetrieveRequest(Buffer.from([0x0a, 0xff, 0xff, 0xff]));
    assert.match(d.decodeError ?? '', /malformed/);
    const odd = protobuf.Writer.create();
    odd.uint32((4 << 3) | 2).bytes(new Uint8Array([1, 2, 3]));
    assert.match(decodeRetrieveRequest(odd.finish()).decodeError ?? '', /multiple of 4/);
  });

  it('when the embedding is empty, then it decodes to an empty Float32Array', () => {
    const d = decodeRetrieveRequest(encodeRetrieveRequest({ request_id: 'x' }));
    assert.equal(d.user_embedding.length, 0);
    assert.equal(d.pipeline, '');
    assert.equal(d.num_results, 0);
  });

  it('when any RetrieveResponse is encoded directly, then it decodes to what protobufjs fromObject + encode gives', () => {
    const T = protoRoot().lookupType('funnel.v1.RetrieveResponse');
    const str = fc.string({ maxLength: 12 });
    const num = fc.oneof(fc.double({ noNaN: true }), fc.constant(0), fc.constant(-0));
    const u32 = fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffffffff }));
    fc.assert(
      fc.property(
        fc.record({
          candidates: fc.array(fc.record({ ad_id: str, advertiser_id: str, campaign_id: str, category: str, score: num, sources: fc.array(str, { maxLength: 3 }) }), { maxLength: 5 }),
          degraded: fc.boolean(),
          degraded_stages: fc.array(str, { maxLength: 3 }),
          stages: fc.array(
            fc.record({ name: str, candidates_in: u32, candidates_out: u32, latency_ms: num, status: str, detail: str, dropped: fc.dictionary(fc.string({ minLength: 1, maxLength: 8 }), u32, { maxKeys: 4 }) }),
            { maxLength: 4 },
          ),
          request_id: str,
          pipeline: str,
          data_seq: fc.oneof(fc.constant('0'), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }).map(String)),
        }),
        (m) => {
          const ours = T.toObject(T.decode(encodeRetrieveResponse(m)), { longs: String, defaults: true });
          const theirs = T.toObject(T.decode(T.encode(T.fromObject(m)).finish()), { longs: String, defaults: true });
          assert.deepEqual(ours, theirs);
        },
      ),
      { numRuns: 500 },
    );
  });
});
