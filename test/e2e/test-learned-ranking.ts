/**
 * Learned early ranking end to end: a server whose EarlyRanker serves the fixture MLP (scores
 * checked against the MLP computed here), falls back to the linear weights when the model is
 * late or fails (named in degraded_stages), refuses a hot reload to a bad model, and measures
 * shadow models in its metrics.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RANKER_FEATURES } from '../../src/config/schema';
import { row, tempDir } from '../fixtures/catalog';
import { startE2eServer, sleep, type CandidateMsg, type E2eServer, type RetrieveRequestMsg, type RetrieveResponseMsg } from '../fixtures/e2e-server';
import { fixture, logit, mlpPctr } from '../fixtures/onnx-models';

const DIM = 4;
const ALL = [...RANKER_FEATURES];

/** 60 untargeted ads with spread bids, qualities and priors. */
function catalogRows(): Record<string, unknown>[] {
  return Array.from({ length: 60 }, (_, n) =>
    row(n, DIM, { bid_micros: 200_000 + 10_000 * n, quality: (n % 7) / 6, ctr_prior: [0.002, 0.01, 0.03, 0.1, 0.4][n % 5] }),
  );
}

const EMBEDDING = [0.8, -0.3, 0.5, 0.1];
const request = (pipeline: string, id = 'r1'): RetrieveRequestMsg => ({ request_id: id, user_id: 'u1', user_embedding: EMBEDDING, num_results: 100, pipeline, debug: true });

/** pCTR of a returned candidate, from its score and its row's bid. */
function pctrOf(c: CandidateMsg, rows: Map<string, Record<string, unknown>>): number {
  return c.score! / (((rows.get(c.ad_id)!.bid_micros as number) / 1e6) * 1000);
}

/** The MLP's pCTR of a returned candidate, from the catalog row, the request and its sources (no events: popularity_rate 0). */
function expectedMlp(c: CandidateMsg, rows: Map<string, Record<string, unknown>>): number {
  const r = rows.get(c.ad_id)!;
  const v = r.embedding as number[];
  let sim = 0;
  for (let i = 0; i < DIM; i++) sim += Math.fround(EMBEDDING[i]) * Math.fround(v[i]);
  const has = (s: string) => (c.sources.includes(s) ? 1 : 0);
  return mlpPctr([sim, logit(r.ctr_prior as number), 0, r.quality as number, has('Ann'), has('Targeting'), has('Popularity')]);
}

const stage = (res: RetrieveResponseMsg, name: string) => res.stages.find((s) => s.name === name)!;
const byAd = (res: RetrieveResponseMsg) => new Map(res.candidates.map((c) => [c.ad_id, c.score]));

/** `name{labels...}` sample values of a Prometheus exposition text (labels matched as given). */
function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    if (!Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) continue;
    return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return undefined;
}

describe('e2e: learned early ranking (ONNX)', function () {
  const rows = catalogRows();
  const rowsById = new Map(rows.map((r) => [r.ad_id as string, r]));
  const mlp = { kind: 'onnx', path: fixture('mlp.onnx'), features: ALL };

  describe('on a server whose default pipeline serves the MLP', () => {
    let s: E2eServer;
    before(async () => {
      s = await startE2eServer({
        rows,
        config: {
          pipelines: {
            default: { stages: { EarlyRanker: { model: mlp } } },
            linear: { inherits: 'default', stages: { EarlyRanker: { model: { kind: 'linear' } } } },
            late: { inherits: 'default', stages: { EarlyRanker: { timeout_ms: 30, model: { fault: { delay_ms: 1000 } } } } },
            broken: { inherits: 'default', stages: { EarlyRanker: { model: { fault: { error_rate: 1 } } } } },
            shadowed: { inherits: 'default', stages: { EarlyRanker: { shadow_model: { ...mlp, sample: 1 } } } },
            lr_shadow: { inherits: 'linear', stages: { EarlyRanker: { shadow_model: { kind: 'onnx', path: fixture('logistic.onnx'), features: ALL, sample: 1 } } } },
            shadow_fails: { inherits: 'default', stages: { EarlyRanker: { shadow_model: { ...mlp, sample: 1, fault: { error_rate: 1 } } } } },
          },
        },
      });
    });
    after(async () => {
      await s?.stop();
    });

    it('when a Retrieve is ranked, then every score is bid x the MLP computed here from its known weights, and nothing is degraded', async () => {
      const res = await s.retrieval.retrieve(request('default'));
      assert.ok(res.candidates.length >= 10, `only ${res.candidates.length} candidates`);
      assert.deepEqual(res.degraded_stages, []);
      assert.match(stage(res, 'EarlyRanker').detail ?? '', /model=onnx/);
      for (const c of res.candidates) {
        const want = expectedMlp(c, rowsById);
        assert.ok(Math.abs(pctrOf(c, rowsById) - want) <= 2e-6, `${c.ad_id}: pCTR ${pctrOf(c, rowsById)}, the MLP says ${want}`);
      }
      const linear = byAd(await s.retrieval.retrieve(request('linear')));
      const differ = res.candidates.filter((c) => linear.has(c.ad_id) && Math.abs(linear.get(c.ad_id)! - c.score!) > 0.01 * c.score!).length;
      assert.ok(differ > 0, 'the MLP should score unlike the linear weights');
    });

    for (const [pipeline, why] of [
      ['late', /fallback=linear weights \(model timeout: no answer within 25 ms\)/],
      ['broken', /fallback=linear weights \(model error: injected model fault\)/],
    ] as const) {
      it(`when the model is ${pipeline}, then the linear weights answer (the linear pipeline's scores exactly) and EarlyRanker is in degraded_stages`, async () => {
        const res = await s.retrieval.retrieve(request(pipeline));
        const linear = await s.retrieval.retrieve(request('linear'));
        assert.equal(res.degraded, true);
        assert.deepEqual(res.degraded_stages, ['EarlyRanker']);
        assert.deepEqual(
          res.candidates.map((c) => [c.ad_id, c.score]),
          linear.candidates.map((c) => [c.ad_id, c.score]),
        );
        const st = stage(res, 'EarlyRanker');
        assert.equal(st.status, 'ok');
        assert.match(st.detail ?? '', why);
        if (pipeline === 'late') assert.ok(st.latency_ms! < 30, `EarlyRanker took ${st.latency_ms} ms`);
      });
    }

    it('when shadow models score sampled requests, then rank correlation, pCTR drift and failures appear in metrics and answers are unchanged', async () => {
      for (let i = 0; i < 3; i++) {
        const shadowed = await s.retrieval.retrieve(request('shadowed', `s${i}`));
        const plain = await s.retrieval.retrieve(request('default', `s${i}`));
        assert.deepEqual(shadowed.candidates.map((c) => [c.ad_id, c.score]), plain.candidates.map((c) => [c.ad_id, c.score]));
        assert.deepEqual(shadowed.degraded_stages, []);
        await s.retrieval.retrieve(request('lr_shadow', `l${i}`));
        const failing = await s.retrieval.retrieve(request('shadow_fails', `f${i}`));
        assert.deepEqual(failing.degraded_stages, [], 'a failing shadow does not degrade the answer');
      }
      // Shadow runs end after their answers.
      let text = '';
      for (let t = 0; t < 100; t++) {
        text = await s.running.metrics.text();
        const done = ['shadowed', 'lr_shadow'].map((p) => sample(text, 'funnel_ranker_shadow_runs_total', { pipeline: p, result: 'ok' }) ?? 0);
        if (done.every((n) => n >= 3) && (sample(text, 'funnel_ranker_shadow_runs_total', { pipeline: 'shadow_fails', result: 'error' }) ?? 0) >= 3) break;
        await sleep(20);
      }
      assert.equal(sample(text, 'funnel_ranker_shadow_runs_total', { pipeline: 'shadowed', result: 'ok' }), 3);
      assert.equal(sample(text, 'funnel_ranker_shadow_runs_total', { pipeline: 'shadow_fails', result: 'error' }), 3);
      // The same model as its shadow: the orders agree exactly and pCTRs do not drift.
      assert.equal(sample(text, 'funnel_ranker_shadow_rank_correlation_count', { pipeline: 'shadowed' }), 3);
      assert.ok(Math.abs(sample(text, 'funnel_ranker_shadow_rank_correlation_sum', { pipeline: 'shadowed' })! - 3) < 1e-9);
      assert.equal(sample(text, 'funnel_ranker_shadow_pctr_drift_sum', { pipeline: 'shadowed' }), 0);
      // The logistic fixture is the linear weights in float32: near-identical orders, float32-sized drift.
      assert.equal(sample(text, 'funnel_ranker_shadow_rank_correlation_count', { pipeline: 'lr_shadow' }), 3);
      assert.ok(sample(text, 'funnel_ranker_shadow_rank_correlation_sum', { pipeline: 'lr_shadow' })! / 3 > 0.99);
      assert.ok(sample(text, 'funnel_ranker_shadow_pctr_drift_sum', { pipeline: 'lr_shadow' })! / 3 < 1e-6);
      assert.equal(sample(text, 'funnel_ranker_shadow_pctr_drift_bucket', { pipeline: 'lr_shadow', le: '0.00001' }), 3);
    });
  });

  describe('on a server started from a config file (hot reload)', () => {
    let s: E2eServer;
    let dir: string;
    const write = (model: string, version: string) =>
      fs.writeFileSync(
        path.join(dir, 'funnel.yaml'),
        `version: ${version}\npipelines:\n  default:\n    stages:\n      EarlyRanker:\n        model: {kind: onnx, path: models/${model}, features: [${ALL.join(', ')}]}\n`,
      );
    before(async () => {
      dir = tempDir('onnx-reload');
      fs.mkdirSync(path.join(dir, 'models'));
      for (const f of ['mlp.onnx', 'out_of_range.onnx', 'logistic.onnx']) fs.copyFileSync(fixture(f), path.join(dir, 'models', f));
      write('mlp.onnx', 'v1');
      s = await startE2eServer({ rows, configFile: path.join(dir, 'funnel.yaml'), watchConfig: false });
    });
    after(async () => {
      await s?.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    });

    it('when the config is reloaded with a model giving pCTRs outside [0, 1], then it is refused and the MLP keeps serving; a good model is then taken', async () => {
      const before = await s.retrieval.retrieve(request('default'));
      for (const c of before.candidates) assert.ok(Math.abs(pctrOf(c, rowsById) - expectedMlp(c, rowsById)) <= 2e-6);

      write('out_of_range.onnx', 'v2');
      const refused = await s.running.reloadConfig();
      assert.equal(refused.result, 'error');
      const issues = refused.result === 'error' ? refused.error.issues : [];
      assert.equal(issues.length, 1);
      assert.match(issues[0], /^pipelines\.default\.stages\.EarlyRanker\.model: .*models\/out_of_range\.onnx: on a probe batch of 1 row\(s\) the model gave .* pCTR must be finite and in \[0, 1\]/);
      assert.equal(s.running.server.config.version, 'v1');
      const still = await s.retrieval.retrieve(request('default'));
      assert.deepEqual(byAd(still), byAd(before));
      assert.equal(sample(await s.running.metrics.text(), 'funnel_config_reloads_total', { result: 'error' }), 1);

      write('logistic.onnx', 'v3');
      const ok = await s.running.reloadConfig();
      assert.equal(ok.result, 'ok');
      assert.equal(s.running.server.config.version, 'v3');
      const after = await s.retrieval.retrieve(request('default'));
      assert.deepEqual(after.degraded_stages, []);
      assert.notDeepEqual(byAd(after), byAd(before));
    });
  });
});
