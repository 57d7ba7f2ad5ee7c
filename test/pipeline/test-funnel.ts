import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import pino from 'pino';
import { defaultConfig } from '../../src/config/load';
import { pipelineSchema } from '../../src/config/schema';
import { Funnel } from '../../src/pipeline/funnel';
import { ingestCatalog } from '../../src/store/ingest';
import { ServingState } from '../../src/serving/state';
import { row, tempDir, writeCatalog } from '../fixtures/catalog';
import { query } from '../fixtures/stage-context';

describe('Funnel', () => {
  let dir: string;
  let state: ServingState;
  before(async () => {
    dir = tempDir('funnel');
    const rows = Array.from({ length: 60 }, (_, i) => row(i, 8, i % 5 === 0 ? { status: 'paused' } : i % 3 === 0 ? { targeting: [{ country: { any_of: ['DE'] } }] } : {}));
    await ingestCatalog(writeCatalog(dir, 'c.jsonl', rows), path.join(dir, 'data'));
    state = await ServingState.open(path.join(dir, 'data'), defaultConfig(), pino({ level: 'silent' }));
  });
  after(async () => {
    await state.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const run = (stages: Record<string, unknown> = {}, q: Parameters<typeof query>[0] = {}) => {
    const funnel = new Funnel(state);
    const pipeline = pipelineSchema.parse({ stages });
    funnel.prepare({ ...defaultConfig(), pipelines: { default: pipeline } });
    return funnel.run(query({ attributes: { country: ['US'] }, embedding: Float32Array.from({ length: 8 }, (_, i) => Math.cos(i)), numResults: 10, ...q }), pipeline, Date.now() + 5000, new AbortController().signal);
  };
  const eligible = (id: number) => state.ads.isActive(id) && state.store.getAdById(id)?.targeting === null;

  it('when every stage works, then the answer is eligible, sourced, ranked and reported in funnel order', async () => {
    const r = await run();
    assert.deepEqual(r.degradedStages, []);
    assert.deepEqual(
      r.reports.map((x) => x.name),
      ['Eligibility', 'Ann', 'Targeting', 'Popularity', 'Merge', 'Filters', 'EarlyRanker', 'Diversifier'],
    );
    assert.equal(r.candidates.length, 10);
    assert.ok(r.candidates.every((c) => eligible(c.id) && Number.isFinite(c.score) && c.sources !== 0));
  });

  it('when a source times out, then it is named in degradedStages and the rest still answer', async () => {
    const r = await run({ Ann: { timeout_ms: 10, fault: { delay_ms: 300 } } });
    assert.deepEqual(r.degradedStages, ['Ann']);
    assert.ok(r.candidates.length > 0 && r.candidates.every((c) => eligible(c.id)));
    assert.equal(r.reports.find((x) => x.name === 'Ann')?.status, 'timeout');
  });

  it('when Filters fail, then nothing is returned (fail closed) and Filters is degraded', async () => {
    const r = await run({ Filters: { fault: { error_rate: 1 } } });
    assert.deepEqual(r.candidates, []);
    assert.ok(r.degradedStages.includes('Filters'));
  });

  it('when the EarlyRanker fails, then a bid x ctr_prior order still answers with eligible ads', async () => {
    const r = await run({ EarlyRanker: { fault: { error_rate: 1 } } });
    assert.deepEqual(r.degradedStages, ['EarlyRanker']);
    assert.ok(r.candidates.length > 0 && r.candidates.every((c) => eligible(c.id) && Number.isFinite(c.score)));
  });

  it('when Eligibility fails, then no source runs and nothing is returned', async () => {
    const r = await run({ Eligibility: { fault: { error_rate: 1 } } });
    assert.deepEqual(r.candidates, []);
    assert.equal(r.reports.find((x) => x.name === 'Targeting')?.status, 'skipped');
    assert.ok(r.degradedStages.includes('Eligibility'));
  });

  it('when there is no user embedding, then Ann is skipped, not degraded', async () => {
    const r = await run({}, { embedding: null });
    assert.equal(r.reports.find((x) => x.name === 'Ann')?.status, 'skipped');
    assert.deepEqual(r.degradedStages, []);
  });

  it('when a request runs, then each stage\'s drop counts add up: Eligibility removes catalog minus eligible, Merge the unsourced, and so on', async () => {
    const r = await run({ Targeting: { k: 5 }, Ann: { k: 5 }, Popularity: { k: 5 }, EarlyRanker: { keep: 2 } }, { excludeAdIds: new Set(['ad-1']) });
    const rep = (name: string) => r.reports.find((x) => x.name === name)!;
    const sum = (d: Record<string, number>) => Object.values(d).reduce((a, b) => a + b, 0);
    const elig = rep('Eligibility');
    assert.equal(sum(elig.dropped), state.ads.size - elig.candidatesOut);
    assert.ok(elig.dropped.not_servable > 0, 'the paused ads');
    assert.ok(elig.dropped.targeting > 0, 'the DE-only ads');
    assert.equal(elig.dropped.excluded_ad, 1);
    const merge = rep('Merge');
    assert.equal(merge.dropped.not_sourced, elig.candidatesOut - merge.candidatesOut);
    assert.ok(rep('EarlyRanker').candidatesIn > 2);
    assert.equal(rep('EarlyRanker').dropped.below_keep, rep('EarlyRanker').candidatesIn - 2);
    const div = rep('Diversifier');
    assert.equal(sum(div.dropped), div.candidatesIn - div.candidatesOut);
    const t = rep('Targeting');
    assert.equal(t.detail.method, 'threshold');
    assert.ok(['bound', 'exhausted'].includes(t.detail.stop as string), `stop=${t.detail.stop}`);
    assert.ok((t.detail.scored as number) <= elig.candidatesOut);
  });

  it('when requests repeat their attributes, then Eligibility answers from its cache until an Admin write, and the write is seen at once', async () => {
    const funnel = new Funnel(state);
    const pipeline = pipelineSchema.parse({});
    funnel.prepare({ ...defaultConfig(), pipelines: { default: pipeline } });
    const go = (q: Parameters<typeof query>[0] = {}) =>
      funnel.run(query({ attributes: { country: ['US'] }, embedding: Float32Array.from({ length: 8 }, (_, i) => Math.cos(i)), numResults: 10, ...q }), pipeline, Date.now() + 5000, new AbortController().signal);
    const cacheOf = (r: Awaited<ReturnType<typeof go>>) => r.reports.find((x) => x.name === 'Eligibility')!.detail.cache;
    const first = await go();
    assert.equal(cacheOf(first), 'miss');
    const second = await go();
    assert.equal(cacheOf(second), 'hit');
    assert.deepEqual(
      second.candidates.map((c) => c.id),
      first.candidates.map((c) => c.id),
    );
    const top = state.ads.adId(first.candidates[0].id);
    const excluded = await go({ excludeAdIds: new Set([top]) });
    assert.equal(cacheOf(excluded), 'hit');
    assert.ok(!excluded.candidates.some((c) => state.ads.adId(c.id) === top), 'exclusions apply after the cache');
    await state.setStatus([top], 'paused');
    try {
      const after = await go();
      // The cache holds the targeting match alone (ANDed with the servable ads per request): a status change keeps it.
      assert.equal(cacheOf(after), 'hit');
      assert.ok(!after.candidates.some((c) => state.ads.adId(c.id) === top), 'the paused ad is gone from the next answer');
      assert.ok(after.candidates.every((c) => eligible(c.id)));
    } finally {
      await state.setStatus([top], 'active');
    }
    const back = await go();
    assert.ok(back.candidates.some((c) => state.ads.adId(c.id) === top));
  });

  it('when Ann is slow past its timeout, then the Targeting walk goes on without it (its own bound) and answers', async () => {
    const r = await run({ Ann: { timeout_ms: 10, fault: { delay_ms: 300 } } });
    assert.deepEqual(r.degradedStages, ['Ann']);
    const t = r.reports.find((x) => x.name === 'Targeting')!;
    assert.equal(t.status, 'ok');
    assert.ok(t.candidatesOut > 0);
  });
});
