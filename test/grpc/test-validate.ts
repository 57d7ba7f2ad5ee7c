import { strict as assert } from 'node:assert';
import { defaultConfig } from '../../src/config/load';
import { RpcError, recordToAd, validateAds, validateRetrieve } from '../../src/grpc/validate';
import { blankRetrieve, type DecodedRetrieve } from '../../src/grpc/codec';

const cfg = defaultConfig();
const ad = (o: Record<string, unknown> = {}) => ({ ad_id: 'a1', advertiser_id: 'v', campaign_id: 'c', category: 'gaming', bid_micros: '1000', embedding: [1, 2], ...o });
const req = (o: Partial<DecodedRetrieve> = {}): DecodedRetrieve => ({ ...blankRetrieve(), ...o });
function fails(fn: () => unknown, field: string): void {
  assert.throws(fn, (e: unknown) => e instanceof RpcError && e.code === 3 && e.details.startsWith(field), `expected INVALID_ARGUMENT on ${field}`);
}

describe('validate', () => {
  it('when an Ad is valid, then it becomes a catalog row with defaults and proto-empty fields treated as absent', () => {
    const [r] = validateAds([ad({ targeting: [{ attributes: { country: { any_of: ['US'], none_of: [] } } }] })], cfg, 2);
    assert.equal(r.status, 'active');
    assert.equal(r.quality, 0.5);
    assert.equal(r.daily_budget_micros, undefined);
    assert.deepEqual(r.targeting, [{ country: { any_of: ['US'] } }]);
  });

  it('when an Ad field is bad, then the error names it in proto terms', () => {
    fails(() => validateAds([ad(), ad({ ad_id: 'b', bid_micros: '-1' })], cfg, 2), 'ads[1].bid_micros');
    fails(() => validateAds([ad({ embedding: [1, 2, 3] })], cfg, 2), 'ads[0].embedding');
    fails(() => validateAds([ad({ targeting: [{ attributes: { country: {} } }] })], cfg, 2), 'ads[0].targeting[0].attributes["country"]');
    fails(() => validateAds([ad({ status: 'deleted' })], cfg, 2), 'ads[0].status');
    fails(() => validateAds([ad(), ad()], cfg, 2), 'ads[1].ad_id');
    fails(() => validateAds([ad({ daily_budget_micros: '9007199254740993' })], cfg, 2), 'ads[0].daily_budget_micros');
    fails(() => validateAds([], cfg, 2), 'ads');
  });

  it('when a Retrieve field is bad, then the error names it', () => {
    fails(() => validateRetrieve(req({ user_embedding: Float32Array.of(1, 2, 3) }), cfg, 2), 'user_embedding');
    fails(() => validateRetrieve(req({ user_embedding: Float32Array.of(1, NaN) }), cfg, 2), 'user_embedding[1]');
    fails(() => validateRetrieve(req({ num_results: 501 }), cfg, 2), 'num_results');
    fails(() => validateRetrieve(req({ pipeline: 'nope' }), cfg, 2), 'pipeline');
    fails(() => validateRetrieve(req({ exclude_ad_ids: new Array(10_001).fill('x') }), cfg, 2), 'exclude_ad_ids');
    fails(() => validateRetrieve(req({ request_id: 'x'.repeat(257) }), cfg, 2), 'request_id');
    fails(() => validateRetrieve(req({ attributes: { c: { values: ['y'.repeat(300)] } } }), cfg, 2), 'attributes["c"].values[0]');
  });

  it('when a Retrieve is valid, then defaults apply (num_results 0, empty pipeline)', () => {
    const q = validateRetrieve(req({ attributes: { country: { values: ['US'] } } }), cfg, 2);
    assert.equal(q.numResults, cfg.limits.default_num_results);
    assert.equal(q.pipeline, 'default');
    assert.equal(q.embedding, null);
    assert.deepEqual(q.attributes.country, ['US']);
  });

  it('when a record is turned back into an Ad, then it validates to the same row', () => {
    const [r] = validateAds([ad({ daily_budget_micros: '5', start_time: '2026-01-01T00:00:00.000Z', targeting: [{ attributes: { a: { none_of: ['x'] } } }] })], cfg, 2);
    const rec = {
      id: 0,
      ...r,
      daily_budget_micros: r.daily_budget_micros ?? null,
      targeting: r.targeting ?? null,
      start_ms: Date.parse(r.start_time!),
      end_ms: null,
      seq: 1,
    };
    const back = recordToAd(rec, Float32Array.from(r.embedding));
    const [again] = validateAds([back], cfg, 2);
    assert.deepEqual(again, r);
  });
});
