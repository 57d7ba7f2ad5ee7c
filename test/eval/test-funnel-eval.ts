/**
 * funnel eval: the exhaustive reference against a brute-force oracle, recall and loss accounting
 * of a funnel that sources too little, and the command line (table, --json, --against, bad lines).
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import pino from 'pino';
import { defaultConfig, parseConfigObject } from '../../src/config/load';
import { blankRetrieve } from '../../src/grpc/codec';
import { diff, FunnelEvaluator, quantile, summarize, type RequestEval } from '../../src/eval/funnel-eval';
import { Funnel } from '../../src/pipeline/funnel';
import { evaluateTargeting } from '../../src/store/targeting-eval';
import { ecpm, pctr, clampedLogit } from '../../src/stages/ranking/early-ranker';
import { ServingState } from '../../src/serving/state';
import { RequestLog } from '../../src/telemetry/request-log';
import { ingestCatalog } from '../../src/store/ingest';
import { row, tempDir, writeCatalog } from '../fixtures/catalog';

const DIM = 6;
const CLI = path.resolve(__dirname, '..', '..', 'src', 'cli', 'main.js');

/** 400 ads: every 9th paused, every 4th for country US only, bids and ctr priors spread widely. */
function rows(): Record<string, unknown>[] {
  return Array.from({ length: 400 }, (_, n) =>
    row(n, DIM, {
      bid_micros: 1000 + ((n * 7919) % 997) * 1000,
      ctr_prior: 0.001 + ((n * 104729) % 89) / 1000,
      quality: ((n * 31) % 100) / 100,
      ...(n % 9 === 0 ? { status: 'paused' } : {}),
      ...(n % 4 === 0 ? { targeting: [{ country: { any_of: ['US'] } }] } : {}),
    }),
  );
}

function request(i: number, extra: Partial<ReturnType<typeof blankRetrieve>> = {}) {
  return {
    ...blankRetrieve(),
    request_id: `r${i}`,
    attributes: { country: { values: [i % 2 === 0 ? 'US' : 'DE'] } },
    user_embedding: Float32Array.from({ length: DIM }, (_, j) => Math.cos(i * 1.3 + j)),
    num_results: 20,
    ...extra,
  };
}

describe('funnel eval', () => {
  let tmp: string;
  let data: string;
  let state: ServingState;
  const catalog = rows();
  before(async () => {
    tmp = tempDir('eval');
    data = path.join(tmp, 'data');
    await ingestCatalog(writeCatalog(tmp, 'c.jsonl', catalog), data);
    state = await ServingState.open(data, defaultConfig(), pino({ level: 'silent' }));
  });
  after(async () => {
    await state.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('when the reference is computed, then it is the top N of a brute-force eCPM over every eligible ad', async () => {
    const config = defaultConfig();
    const ev = new FunnelEvaluator(state, config);
    const w = config.pipelines.default.stages.EarlyRanker.weights;
    for (let i = 0; i < 6; i++) {
      const req = request(i);
      const q = ev.query(req);
      const result = await new Funnel(state).run(q, config.pipelines.default, Date.now() + 60_000, new AbortController().signal, undefined, true);
      const ref = await ev.reference(q, config.pipelines.default, result, 20);
      const country = i % 2 === 0 ? 'US' : 'DE';
      const oracle = catalog
        .filter((r) => r.status !== 'paused' && evaluateTargeting(r.targeting as never, { country: [country] }))
        .map((r) => {
          const v = r.embedding as number[];
          let sim = 0;
          for (let j = 0; j < DIM; j++) sim += v[j] * req.user_embedding[j];
          const f = { ann_similarity: sim, ctr_prior_logit: clampedLogit(r.ctr_prior as number), popularity_rate: 0, quality: r.quality as number, source_ann: 0, source_targeting: 0, source_popularity: 0 };
          return { ad: r.ad_id as string, s: ecpm(r.bid_micros as number, pctr(w, f)) };
        })
        .sort((a, b) => b.s - a.s)
        .slice(0, 20);
      assert.deepEqual(
        ref.map((c) => state.ads.adId(c.id)),
        oracle.map((o) => o.ad),
      );
      ref.forEach((c, j) => assert.ok(Math.abs(c.score - oracle[j].s) < 1e-6 * oracle[j].s));
    }
  });

  it('when every source is deep enough to see every ad, then recall is 1 and nothing is lost', async () => {
    const config = parseConfigObject({ pipelines: { default: { stages: { Ann: { k: 1000 }, Targeting: { k: 1000, order: 'prior' }, EarlyRanker: { keep: 1000 } } } } });
    const ev = new FunnelEvaluator(state, config);
    for (let i = 0; i < 4; i++) {
      const e = await ev.evaluate(ev.query(request(i)));
      assert.equal(e.recall, 1);
      assert.equal(e.ecpmShare, 1);
      assert.deepEqual(e.loss, {});
      assert.equal(e.top.length, 20);
    }
  });

  it('when the sources are shallow, then recall drops and every lost ad is counted at Merge as not_sourced', async () => {
    const config = parseConfigObject({
      pipelines: { default: { stages: { Ann: { enabled: false }, Popularity: { enabled: false }, Targeting: { k: 25, order: 'prior', prior: { bid: 0, quality: 1, ctr_prior: 0 } } } } },
    });
    const ev = new FunnelEvaluator(state, config);
    const evals: RequestEval[] = [];
    for (let i = 0; i < 4; i++) evals.push(await ev.evaluate(ev.query(request(i))));
    for (const e of evals) {
      assert.ok(e.recall < 1, `recall ${e.recall}`);
      const lost = Math.round((1 - e.recall) * 20);
      assert.deepEqual(e.loss, { Merge: { not_sourced: lost } });
    }
    const s = summarize('c', 'default', evals);
    assert.equal(s.requests, 4);
    assert.equal(s.n, 20);
    assert.ok(Math.abs(s.recall_at_n - evals.reduce((a, e) => a + e.recall, 0) / 4) < 1e-12);
    assert.equal(s.recall_min, Math.min(...evals.map((e) => e.recall)));
    assert.equal(s.loss.Merge.not_sourced, evals.reduce((a, e) => a + e.loss.Merge.not_sourced, 0));
  });

  it('when the default pipeline (the ranker walk) runs, then it keeps the whole reference top N', async () => {
    const ev = new FunnelEvaluator(state, defaultConfig());
    for (let i = 0; i < 6; i++) assert.equal((await ev.evaluate(ev.query(request(i)))).recall, 1);
  });

  it('when quantiles and diffs are taken, then they follow their definitions', () => {
    assert.equal(quantile([5, 1, 4, 2, 3], 0.5), 3);
    assert.equal(quantile([5, 1, 4, 2, 3, 6, 7, 8, 9, 10], 0.1), 1);
    assert.ok(Number.isNaN(quantile([], 0.5)));
    const e = (top: number[]): RequestEval => ({ pipeline: 'p', n: 2, recall: 1, ecpmShare: 1, latencyMs: 1, cpuMs: 1, loss: {}, top, topScores: [1, 1], eligible: 3 });
    const d = diff([e([1, 2]), e([3, 4])], [e([1, 5]), e([3, 4])], (id) => (id === 5 ? 'B' : 'A'));
    assert.equal(d.overlap_at_n, 0.75);
    assert.deepEqual(d.advertiser_share_moves[0], { advertiser_id: 'A', share_a: 1, share_b: 0.75 });
  });

  describe('the command line', () => {
    const funnel = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
    let reqs: string;
    let shallow: string;
    before(() => {
      const lines = [0, 1, 2, 3].map((i) => {
        const r = request(i);
        return JSON.stringify({ request_id: r.request_id, attributes: r.attributes, userEmbedding: Array.from(r.user_embedding), num_results: 20 });
      });
      // Line 3 is not JSON, line 5 has a bad field, line 6 is a request-log line.
      lines.splice(2, 0, '{nope');
      lines.splice(4, 0, JSON.stringify({ num_results: 'many' }));
      lines.push(JSON.stringify({ time: '2026-01-01T00:00:00.000Z', pipeline: 'default', data_seq: 1, request: { attributes: { country: { values: ['US'] } } }, ad_ids: [] }));
      reqs = path.join(tmp, 'requests.jsonl');
      fs.writeFileSync(reqs, lines.join('\n') + '\n\n');
      shallow = path.join(tmp, 'shallow.yaml');
      fs.writeFileSync(shallow, 'pipelines:\n  default:\n    stages:\n      Ann: { enabled: false }\n      Popularity: { enabled: false }\n      Targeting: { k: 25, order: prior }\n');
    });

    it('when some request lines are bad, then each is named by line, skipped, and the exit code is 1', () => {
      const r = funnel('eval', '--data', data, '--requests', reqs);
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, /requests\.jsonl:3: bad JSON/);
      assert.match(r.stderr, /requests\.jsonl:5: num_results/);
      assert.match(r.stdout, /recall@N/);
      assert.match(r.stdout, /2 bad request lines skipped/);
    });

    it('when --json and --against are given, then one line per config has the contract\'s fields and the diff', () => {
      const r = funnel('eval', '--data', data, '--requests', reqs, '--config', shallow, '--against', path.join(tmp, 'none.yaml'), '--json');
      assert.equal(r.status, 2, 'a missing --against file is a usage error');
      fs.writeFileSync(path.join(tmp, 'default.yaml'), 'version: v2\n');
      const ok = funnel('eval', '--data', data, '--requests', reqs, '--config', shallow, '--against', path.join(tmp, 'default.yaml'), '--json', '--num-results', '10');
      assert.equal(ok.status, 1, ok.stderr);
      const lines = ok.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      assert.equal(lines.length, 2);
      for (const l of lines) {
        for (const k of ['config', 'pipeline', 'requests', 'n', 'recall_at_n', 'recall_p10', 'ecpm_share', 'latency_p50_ms', 'latency_p99_ms', 'cpu_ms_per_request', 'loss']) assert.ok(k in l, `missing ${k}`);
        assert.equal(l.requests, 5);
        assert.equal(l.n, 10);
      }
      assert.equal(lines[0].config, 'shallow.yaml');
      assert.ok((lines[0].recall_at_n as number) < 1);
      assert.equal(lines[1].recall_at_n, 1);
      assert.equal(lines[1].against, 'shallow.yaml');
      assert.ok(typeof lines[1].overlap_at_n === 'number');
    });

    it('when --requests is a request-log directory, then its logged requests are replayed', async () => {
      const dir = path.join(tmp, 'log');
      const log = new RequestLog({ dir, sample: 1 });
      for (let i = 0; i < 3; i++) log.record({ timeMs: Date.now(), pipeline: 'default', dataSeq: i === 0 ? state.seq : 999_999, request: request(i), adIds: [] });
      await log.close();
      const r = funnel('eval', '--data', data, '--requests', dir, '--json');
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, new RegExp(`note: 2 of 3 logged requests were answered at another data sequence than this directory's \\(${state.seq}\\)`));
      const line = JSON.parse(r.stdout.trim()) as { requests: number; n: number };
      assert.equal(line.requests, 3);
      assert.equal(line.n, 20);
    });

    it('when the data directory or the requests are missing, then it exits 3', () => {
      assert.equal(funnel('eval', '--data', path.join(tmp, 'nothing'), '--requests', reqs).status, 3);
      assert.equal(funnel('eval', '--data', data, '--requests', path.join(tmp, 'nothing.jsonl')).status, 3);
    });
  });
});
