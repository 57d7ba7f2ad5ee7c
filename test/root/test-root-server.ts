import { strict as assert } from 'node:assert';
import * as grpc from '@grpc/grpc-js';
import { defaultConfig, parseConfigObject } from '../../src/config/load';
import { mergeAnswers, type CandidateMsg, type ShardAnswer } from '../../src/root/root-server';

function cand(id: string, score: number, adv = `adv-${id}`, cat = 'c'): CandidateMsg {
  return { ad_id: id, advertiser_id: adv, category: cat, score, sources: ['Ann'] };
}

function answer(shard: number, candidates: CandidateMsg[], extra: Record<string, unknown> = {}): ShardAnswer {
  return { shard, response: { candidates, degraded_stages: [], pipeline: 'default', data_seq: String(10 + shard), ...extra }, outcome: { ms: 3, attempts: 1, hedged: false, replica: `r${shard}` } };
}

describe('root/root-server mergeAnswers', () => {
  const config = defaultConfig();

  it('when two shards answer, then candidates are merged best first across shards and cut at N', () => {
    const m = mergeAnswers(config, {}, 3, [answer(0, [cand('a', 9), cand('b', 5), cand('c', 1)]), answer(1, [cand('d', 7), cand('e', 6)])], true);
    assert.deepEqual(m.response.candidates!.map((c) => c.ad_id), ['a', 'd', 'e']);
    assert.equal(m.response.degraded, false);
    assert.equal(m.cut.get('b')!.reason, 'below_cutoff');
    assert.equal(m.cut.get('c')!.reason, 'below_cutoff');
    assert.equal(m.response.data_seq, '10');
    // A Retrieve (not Explain) keeps no reasons.
    assert.equal(mergeAnswers(config, {}, 3, [answer(0, [cand('a', 9), cand('b', 5)]), answer(1, [cand('d', 7), cand('e', 6)])]).cut.size, 0);
  });

  it('when ties meet, then the order is by ad_id, so the answer does not depend on which shard answered first', () => {
    const x = mergeAnswers(config, {}, 2, [answer(0, [cand('b', 5)]), answer(1, [cand('a', 5)])]);
    const y = mergeAnswers(config, {}, 2, [answer(1, [cand('a', 5)]), answer(0, [cand('b', 5)])]);
    assert.deepEqual(x.response.candidates, y.response.candidates);
    assert.deepEqual(x.response.candidates!.map((c) => c.ad_id), ['a', 'b']);
  });

  it('when an advertiser or category fills its cap on two shards together, then the caps hold across shards', () => {
    const c = parseConfigObject({ pipelines: { default: { stages: { Diversifier: { max_per_advertiser: 1, max_per_category: 2 } } } } });
    const m = mergeAnswers(c, {}, 10, [answer(0, [cand('a', 9, 'X', 'k'), cand('b', 8, 'Y', 'k')]), answer(1, [cand('c', 8.5, 'X', 'm'), cand('d', 7, 'Z', 'k'), cand('e', 6, 'W', 'm')])], true);
    assert.deepEqual(m.response.candidates!.map((x) => x.ad_id), ['a', 'b', 'e']);
    assert.equal(m.cut.get('c')!.reason, 'advertiser_cap');
    assert.equal(m.cut.get('d')!.reason, 'category_cap');
  });

  it('when a shard did not answer, then the answer is degraded naming it and carries the other shards\' degraded stages', () => {
    const failed: ShardAnswer = { shard: 1, outcome: { ms: 50, attempts: 2, hedged: true, error: { code: grpc.status.UNAVAILABLE, details: 'down' } as grpc.ServiceError } };
    const m = mergeAnswers(config, { debug: true }, 5, [answer(0, [cand('a', 1)], { degraded_stages: ['Ann'] }), failed]);
    assert.equal(m.response.degraded, true);
    assert.deepEqual(m.response.degraded_stages!.sort(), ['Ann', 'shard-1']);
    const names = m.response.stages!.map((s) => s.name);
    assert.ok(names.includes('shard-0') && names.includes('shard-1') && names.includes('RootMerge'), names.join(','));
    assert.equal(m.response.stages!.find((s) => s.name === 'shard-1')!.status, 'error');
  });
});
