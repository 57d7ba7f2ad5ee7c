import * as assert from 'node:assert/strict';
import { protoRoot } from '../../src/grpc/proto';
import { scanRetrieveResponse } from '../../bench/lib/wire';

function encodeResponse(fields: Record<string, unknown>): Uint8Array {
  const t = protoRoot().lookupType('funnel.v1.RetrieveResponse');
  return t.encode(t.fromObject(fields)).finish();
}

describe('bench RetrieveResponse scan', () => {
  it('when a full answer is scanned, then candidates, degraded and its stages are read and the rest skipped', () => {
    const candidates = Array.from({ length: 50 }, (_, i) => ({
      ad_id: `ad-${i}`,
      advertiser_id: 'adv-1',
      campaign_id: 'c',
      category: 'gaming',
      score: 1.5 / (i + 1),
      sources: ['Ann', 'Targeting'],
    }));
    const buf = encodeResponse({
      candidates,
      degraded: true,
      degraded_stages: ['Ann', 'Popularity'],
      stages: [{ name: 'Ann', candidates_in: 10, candidates_out: 5, latency_ms: 1.25, status: 'timeout' }],
      request_id: 'r-1',
      pipeline: 'default',
      data_seq: '123456789012',
    });
    assert.deepEqual(scanRetrieveResponse(buf), { candidates: 50, degraded: true, degradedStages: ['Ann', 'Popularity'] });
  });

  it('when the answer is empty, then nothing is counted', () => {
    assert.deepEqual(scanRetrieveResponse(new Uint8Array(0)), { candidates: 0, degraded: false, degradedStages: [] });
  });

  it('when the bytes are truncated or of an unknown wire type, then it throws', () => {
    const buf = encodeResponse({ candidates: [{ ad_id: 'ad-1' }], request_id: 'x' });
    assert.throws(() => scanRetrieveResponse(buf.subarray(0, buf.length - 1)), /past the end/);
    assert.throws(() => scanRetrieveResponse(Uint8Array.of(0x0b)), /unsupported wire type 3/);
    assert.throws(() => scanRetrieveResponse(Uint8Array.of(0x10, 0x80)), /truncated varint/);
  });
});
