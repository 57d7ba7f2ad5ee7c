/**
 * The feature log end to end: a real server with `featureLog` answers Retrieves over gRPC, and
 * the rows of a sampled request are in the log: every kept candidate with its position and
 * score, the cut ones at cut_sample 1, the features of one ad equal to what this test computes
 * from the catalog and the events it sent; a request without request_id gets the server's, in
 * the response and in the rows. A queue too small for a request drops its rows and counts them
 * in funnel_feature_log_lines_total, and the Retrieve is answered all the same.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { row, tempDir } from '../fixtures/catalog';
import { readFeatureRows } from '../fixtures/examples';
import { adminMetadata, rpcError, startE2eServer, type E2eServer, type RetrieveResponseMsg } from '../fixtures/e2e-server';

const DIM = 8;
const N = 40;
const KEEP = 5;
const HOT = 3; // ad-3: a high bid (ranked first) and engagement (a popularity rate)

function userEmbedding(): number[] {
  return Array.from({ length: DIM }, (_, i) => Math.cos(1.1 + i * 0.9) / 2);
}

function catalog(): Record<string, unknown>[] {
  return Array.from({ length: N }, (_, n) =>
    row(n, DIM, { quality: 0.2 + (n % 5) * 0.15, ctr_prior: 0.005 + (n % 4) * 0.01, ...(n === HOT ? { bid_micros: 50_000_000 } : {}) }),
  );
}

async function counter(e: E2eServer, result: 'written' | 'dropped'): Promise<number> {
  const m = new RegExp(`^funnel_feature_log_lines_total\\{result="${result}"\\} (\\d+)$`, 'm').exec(await e.running.metrics.text());
  assert.ok(m, `funnel_feature_log_lines_total{result="${result}"} is exported`);
  return Number(m[1]);
}

describe('e2e: feature log', () => {
  let e: E2eServer;
  let logDir: string;
  before(async () => {
    e = await startE2eServer({
      rows: catalog(),
      config: { version: 'fl-1', feature_log: { sample: 1, cut_sample: 1 }, pipelines: { default: { stages: { EarlyRanker: { keep: KEEP } } } } },
      featureLog: { dir: path.join(tempDir('e2e-flog'), 'features') },
    });
    logDir = e.running.featureLog!.dir;
  });
  after(async () => {
    await e?.stop();
    if (logDir) fs.rmSync(path.dirname(logDir), { recursive: true, force: true });
  });

  it('when a sampled Retrieve is answered, then its kept and cut candidates are in the log with the features the EarlyRanker used', async () => {
    const eventMs = Date.now() - 60_000;
    const recorded = await e.admin.recordEvents({
      events: [
        { ad_id: `ad-${HOT}`, type: 'IMPRESSION', timestamp_ms: eventMs, request_id: 'an-earlier-retrieve' },
        { ad_id: `ad-${HOT}`, type: 'CLICK', timestamp_ms: eventMs, request_id: 'an-earlier-retrieve' },
      ],
    });
    assert.equal(recorded.applied, 2);
    const u = userEmbedding();
    const res: RetrieveResponseMsg = await e.retrieval.retrieve({ request_id: 'fl-req-1', user_embedding: u, num_results: 3, debug: true }, { deadlineMs: 10_000 });
    assert.equal(res.request_id, 'fl-req-1');
    await e.running.featureLog!.flush();
    const rows = (await readFeatureRows(logDir)).filter((r) => r.request_id === 'fl-req-1');
    const ranked = res.stages.find((s) => s.name === 'EarlyRanker')!;
    assert.equal(ranked.candidates_in, N, 'every ad reached the ranker');
    assert.equal(rows.length, N, 'kept rows plus every cut row (cut_sample 1)');
    assert.equal(new Set(rows.map((r) => r.ad_id)).size, N);

    const kept = rows.filter((r) => r.kept);
    const cut = rows.filter((r) => !r.kept);
    assert.deepEqual(kept.map((r) => r.position), [1, 2, 3, 4, 5]);
    assert.ok(cut.every((r) => r.position === 0));
    for (let i = 1; i < kept.length; i++) assert.ok(kept[i - 1].score >= kept[i].score, 'kept rows best first');
    assert.ok(cut.every((r) => r.score <= kept[KEEP - 1].score), 'every cut row scores at most the last kept one');
    for (const r of rows) {
      assert.equal(r.model_version, 'fl-1/linear');
      assert.equal(r.pipeline, 'default');
      assert.ok(Math.abs(r.time_ms - Date.now()) < 60_000);
    }
    // Every returned ad is a kept row with the same score.
    for (const c of res.candidates) {
      const r = kept.find((k) => k.ad_id === c.ad_id);
      assert.ok(r, `${c.ad_id} returned and logged as kept`);
      assert.equal(r.score, c.score);
    }

    // ad-3, recomputed here from the catalog row, the request and the events sent.
    const hot = kept[0];
    assert.equal(hot.ad_id, `ad-${HOT}`);
    const ad = catalog()[HOT] as { embedding: number[]; quality: number; ctr_prior: number; bid_micros: number };
    let sim = 0;
    for (let i = 0; i < DIM; i++) sim += Math.fround(u[i]) * Math.fround(ad.embedding[i]);
    const decay = 2 ** (-(hot.time_ms - eventMs) / 3_600_000);
    const sources = res.candidates.find((c) => c.ad_id === hot.ad_id)!.sources;
    const expected = {
      ann_similarity: sim,
      // The ad table keeps ctr_prior and quality as float32.
      ctr_prior_logit: Math.log(Math.fround(ad.ctr_prior) / (1 - Math.fround(ad.ctr_prior))),
      popularity_rate: decay / (decay + 100),
      quality: Math.fround(ad.quality),
      source_ann: sources.includes('Ann') ? 1 : 0,
      source_targeting: sources.includes('Targeting') ? 1 : 0,
      source_popularity: sources.includes('Popularity') ? 1 : 0,
    };
    assert.deepEqual(Object.keys(hot.features), Object.keys(expected));
    assert.ok(Math.abs(hot.features.ann_similarity - expected.ann_similarity) < 1e-5, `ann_similarity ${hot.features.ann_similarity} vs ${expected.ann_similarity}`);
    assert.ok(Math.abs(hot.features.ctr_prior_logit - expected.ctr_prior_logit) < 1e-12);
    assert.ok(Math.abs(hot.features.popularity_rate - expected.popularity_rate) < 1e-9, `popularity_rate ${hot.features.popularity_rate} vs ${expected.popularity_rate}`);
    assert.equal(hot.features.quality, expected.quality);
    assert.deepEqual(
      [hot.features.source_ann, hot.features.source_targeting, hot.features.source_popularity],
      [expected.source_ann, expected.source_targeting, expected.source_popularity],
    );
    assert.equal(expected.source_popularity, 1, 'the only ad with engagement came from Popularity');
    // The score is eCPM from those features and the default weights.
    const f = hot.features;
    const z = -1 + 2 * f.ann_similarity + 1 * f.ctr_prior_logit + 5 * f.popularity_rate + 0.5 * f.quality;
    const ecpm = (ad.bid_micros / 1e6) * (1 / (1 + Math.exp(-z))) * 1000;
    assert.ok(Math.abs(hot.score - ecpm) < 1e-9 * ecpm, `score ${hot.score} vs ${ecpm}`);
  });

  it('when a Retrieve sends no request_id, then the server assigns one, answers with it and logs its rows under it; an Explain is not logged', async () => {
    const res = await e.retrieval.retrieve({ user_embedding: userEmbedding(), num_results: 3 }, { deadlineMs: 10_000 });
    assert.match(res.request_id ?? '', /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    const other = await e.retrieval.retrieve({ num_results: 3 }, { deadlineMs: 10_000 });
    // Explain runs the funnel too, but shows nobody anything: never logged.
    const explained = await e.retrieval.explain({ request: { request_id: 'fl-explained', user_embedding: userEmbedding() }, ad_ids: ['ad-1'] }, { deadlineMs: 10_000, metadata: adminMetadata() });
    assert.equal(explained.response.request_id, 'fl-explained');
    assert.notEqual(other.request_id, res.request_id);
    await e.running.featureLog!.flush();
    const rows = await readFeatureRows(logDir);
    const mine = rows.filter((r) => r.request_id === res.request_id);
    assert.equal(mine.filter((r) => r.kept).length, KEEP);
    assert.deepEqual(
      res.candidates.map((c) => c.ad_id).filter((id) => !mine.some((r) => r.kept && r.ad_id === id)),
      [],
    );
    assert.ok(rows.some((r) => r.request_id === other.request_id));
    assert.ok(!rows.some((r) => r.request_id === 'fl-explained'));
    assert.equal(await counter(e, 'written'), e.running.featureLog!.stats().written);
    assert.equal(await counter(e, 'dropped'), 0);
  });

  it('when RecordEvents carries a request_id, then it is accepted, and one longer than max_string_bytes is INVALID_ARGUMENT naming it', async () => {
    const ok = await e.admin.recordEvents({ events: [{ ad_id: 'ad-1', type: 'IMPRESSION', request_id: 'fl-req-1' }] });
    assert.equal(ok.applied, 1);
    const err = await rpcError(e.admin.recordEvents({ events: [{ ad_id: 'ad-1', type: 'CLICK' }, { ad_id: 'ad-1', type: 'CLICK', request_id: 'x'.repeat(257) }] }));
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.match(err.details, /^events\[1\]\.request_id: /);
  });
});

describe('e2e: feature log, queue full', () => {
  let e: E2eServer;
  let logDir: string;
  before(async () => {
    e = await startE2eServer({
      rows: catalog(),
      config: { feature_log: { sample: 1, cut_sample: 1 }, pipelines: { default: { stages: { EarlyRanker: { keep: KEEP } } } } },
      // Smaller than one request's rows: every sampled request is dropped whole.
      featureLog: { dir: path.join(tempDir('e2e-flog-full'), 'features'), maxQueueBytes: 4_000 },
    });
    logDir = e.running.featureLog!.dir;
  });
  after(async () => {
    await e?.stop();
    if (logDir) fs.rmSync(path.dirname(logDir), { recursive: true, force: true });
  });

  it('when the queue cannot take a request, then its rows are dropped, counted in funnel_feature_log_lines_total, and the Retrieve is answered', async () => {
    for (let i = 0; i < 3; i++) {
      const res = await e.retrieval.retrieve({ request_id: `full-${i}`, user_embedding: userEmbedding(), num_results: 3 }, { deadlineMs: 10_000 });
      assert.equal(res.candidates.length, 3);
      assert.ok(!res.degraded);
    }
    await e.running.featureLog!.flush();
    assert.equal(await counter(e, 'dropped'), 3 * N);
    assert.equal(await counter(e, 'written'), 0);
    assert.deepEqual(e.running.featureLog!.stats(), { written: 0, dropped: 3 * N, files: 0, pendingRows: 0 });
    assert.deepEqual(await readFeatureRows(logDir), []);
  });
});
