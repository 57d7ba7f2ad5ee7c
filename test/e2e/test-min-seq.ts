/**
 * RetrieveRequest.min_seq, the consistency token (CONTRACT section 2), and GetAdsRequest.min_seq,
 * the same token for Admin reads: a Retrieve (or GetAds) asking for a
 * write this server has not applied yet waits for it (here the write is made by another process
 * of the data directory, straight into the store, which the server learns of only by catching
 * up), and past the deadline answers UNAVAILABLE or, as configured, a degraded answer naming
 * `Consistency`.
 */
import { strict as assert } from 'node:assert';
import * as grpc from '@grpc/grpc-js';
import { catalogRowSchema } from '../../src/store/catalog-schema';
import { CatalogStore } from '../../src/store/catalog-store';
import { row } from '../fixtures/catalog';
import { adIds, attrs, rpcError, startE2eServer, type E2eServer } from '../fixtures/e2e-server';

const DIM = 4;
const rows = Array.from({ length: 6 }, (_, n) => row(n, DIM, { targeting: [{ probe: { any_of: [`base-${n}`] } }] }));

/** Writes an ad into the server's data directory as another process would: the server is not told. */
async function writeBehindItsBack(s: E2eServer, adId: string, probe: string): Promise<number> {
  const store = CatalogStore.open(s.dataDir);
  try {
    const r = await store.upsert([catalogRowSchema.parse({ ...row(90, DIM), ad_id: adId, targeting: [{ probe: { any_of: [probe] } }] })]);
    return r.seq;
  } finally {
    await store.close();
  }
}

describe('e2e: Retrieve min_seq (consistency token)', function () {
  let s: E2eServer | undefined;
  afterEach(async () => {
    await s?.stop();
    s = undefined;
  });

  it('when min_seq names a write another process made, then the Retrieve waits until it is applied and serves it', async () => {
    s = await startE2eServer({ rows });
    const seq = await writeBehindItsBack(s, 'elsewhere', 'p-elsewhere');
    assert.ok(Number(s.running.state.seq) < seq, 'the server has not applied the write yet');
    const res = await s.retrieval.retrieve({ attributes: attrs({ probe: ['p-elsewhere'] }), min_seq: seq }, { deadlineMs: 10_000 });
    assert.ok(Number(res.data_seq) >= seq);
    assert.deepEqual(adIds(res), ['elsewhere']);
    assert.deepEqual(res.degraded_stages, []);
  });

  it('when min_seq is not reached by the deadline, then the answer is UNAVAILABLE naming min_seq, and the server goes on', async () => {
    s = await startE2eServer({ rows });
    const ahead = Number(s.running.state.seq) + 1000;
    const err = await rpcError(s.retrieval.retrieve({ attributes: attrs({ probe: ['base-1'] }), min_seq: ahead }, { deadlineMs: 300 }));
    assert.equal(err.code, grpc.status.UNAVAILABLE);
    assert.match(err.details, new RegExp(`min_seq ${ahead} is not applied here yet`));
    assert.deepEqual(adIds(await s.retrieval.retrieve({ attributes: attrs({ probe: ['base-1'] }) })), ['ad-1']);
  });

  it('when limits.on_min_seq is degraded, then the late answer is served from the data there is, with Consistency in degraded_stages', async () => {
    s = await startE2eServer({ rows, config: { limits: { on_min_seq: 'degraded' } } });
    const ahead = Number(s.running.state.seq) + 1000;
    const res = await s.retrieval.retrieve({ attributes: attrs({ probe: ['base-2'] }), min_seq: ahead }, { deadlineMs: 300 });
    assert.deepEqual(adIds(res), ['ad-2']);
    assert.ok(res.degraded);
    assert.ok(res.degraded_stages.includes('Consistency'));
  });

  it('when min_seq is past 2^53 - 1, then INVALID_ARGUMENT names min_seq', async () => {
    s = await startE2eServer({ rows });
    const err = await rpcError(s.retrieval.retrieve({ attributes: attrs({ probe: ['base-1'] }), min_seq: '18446744073709551615' }));
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.match(err.details, /min_seq/);
  });

  it('when GetAds carries min_seq of a write another process made, then it waits until the write is applied and returns the ad', async () => {
    s = await startE2eServer({ rows });
    const seq = await writeBehindItsBack(s, 'elsewhere', 'p-elsewhere');
    assert.ok(Number(s.running.state.seq) < seq, 'the server has not applied the write yet');
    const got = await s.admin.getAds({ ad_ids: ['elsewhere', 'ad-1'], min_seq: seq }, { deadlineMs: 10_000 });
    assert.deepEqual(
      got.ads.map((a) => a.ad_id),
      ['elsewhere', 'ad-1'],
    );
  });

  it('when GetAds min_seq is not reached by the deadline, then it is UNAVAILABLE naming min_seq; past 2^53 - 1 it is INVALID_ARGUMENT', async () => {
    s = await startE2eServer({ rows });
    const ahead = Number(s.running.state.seq) + 1000;
    const late = await rpcError(s.admin.getAds({ ad_ids: ['ad-1'], min_seq: ahead }, { deadlineMs: 300 }));
    assert.equal(late.code, grpc.status.UNAVAILABLE);
    assert.match(late.details, new RegExp(`min_seq ${ahead} is not applied here yet`));
    const bad = await rpcError(s.admin.getAds({ ad_ids: ['ad-1'], min_seq: '18446744073709551615' }));
    assert.equal(bad.code, grpc.status.INVALID_ARGUMENT);
    assert.match(bad.details, /^min_seq: /);
    // Without a token (or with one already applied) it answers at once.
    assert.equal((await s.admin.getAds({ ad_ids: ['ad-1'], min_seq: s.running.state.seq })).ads.length, 1);
    assert.equal((await s.admin.getAds({ ad_ids: ['ad-1'] })).ads.length, 1);
  });
});
