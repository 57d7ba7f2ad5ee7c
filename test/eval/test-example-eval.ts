/** `funnel eval --examples`' scoring: pCTR by a config's EarlyRanker model (linear or ONNX), log-loss, AUC, calibration, per (config, pipeline). */
import { strict as assert } from 'node:assert';
import { parseConfigObject } from '../../src/config/load';
import { RANKER_FEATURES } from '../../src/config/schema';
import { evaluateExamples, scoreExamples, summarizeExamples, type ScoredExample } from '../../src/eval/example-eval';
import { FEATURE_NAMES } from '../../src/eval/train-ranker';
import { stopModelWorkers } from '../../src/stages/ranking/onnx-host';
import { exampleRows, TRUE_WEIGHTS } from '../fixtures/examples';
import { fixture, mlpPctr } from '../fixtures/onnx-models';

const ZERO = { bias: 0, ann_similarity: 0, ctr_prior_logit: 0, popularity_rate: 0, quality: 0, source_ann: 0, source_targeting: 0, source_popularity: 0 };
const weightsConfig = (weights: Record<string, number>) => parseConfigObject({ pipelines: { default: { stages: { EarlyRanker: { weights } } } } });
const asExamples = (rows: Record<string, unknown>[], pipeline = 'default'): ScoredExample[] =>
  rows.map((r) => ({ pipeline, features: r.features as ScoredExample['features'], label: r.label as 0 | 1 }));

describe('eval: example scoring', () => {
  after(() => stopModelWorkers());

  it('when every weight is 0, then every pCTR is 1/2: log-loss ln 2, AUC 1/2, mean pCTR 1/2', async () => {
    const ex = asExamples(exampleRows(10, 4));
    const { summaries } = await evaluateExamples([{ label: 'zero', config: weightsConfig(ZERO) }], ex);
    assert.equal(summaries.length, 1);
    const s = summaries[0];
    assert.equal(s.examples, 40);
    assert.equal(s.model, 'linear');
    assert.ok(Math.abs(s.log_loss - Math.LN2) < 1e-12, `log_loss ${s.log_loss}`);
    assert.equal(s.auc, 0.5);
    assert.equal(s.mean_pctr, 0.5);
    assert.equal(s.base_rate, ex.filter((e) => e.label === 1).length / 40);
  });

  it('when four examples are scored by bias and quality alone, then log-loss, AUC and calibration are the hand-computed ones', async () => {
    const f = (quality: number) => ({ ann_similarity: 0, ctr_prior_logit: 0, popularity_rate: 0, quality, source_ann: 0, source_targeting: 0, source_popularity: 0 });
    // logit p = -1 + 2 quality: quality 0 -> sigmoid(-1), 0.5 -> 1/2, 1 -> sigmoid(1).
    const ex: ScoredExample[] = [
      { pipeline: 'default', features: f(0), label: 0 },
      { pipeline: 'default', features: f(0.5), label: 1 },
      { pipeline: 'default', features: f(1), label: 1 },
      { pipeline: 'default', features: f(1), label: 0 },
    ];
    const cfg = weightsConfig({ ...ZERO, bias: -1, quality: 2 });
    const p = await scoreExamples(cfg.pipelines.default, ex);
    const s1 = 1 / (1 + Math.exp(-1));
    assert.deepEqual(Array.from(p), [1 - s1, 0.5, s1, s1]);
    const s = summarizeExamples('c', 'default', 'linear', [0, 1, 1, 0], p, 2);
    const expected = -(Math.log(s1) + Math.log(0.5) + Math.log(s1) + Math.log(1 - s1)) / 4;
    assert.ok(Math.abs(s.log_loss - expected) < 1e-12);
    // Pairs (positive, negative): (0.5 > 1-s1) 1, (0.5 < s1) 0, (s1 > 1-s1) 1, (s1 = s1) 1/2 -> 2.5 / 4.
    assert.equal(s.auc, 0.625);
    assert.equal(s.clicks, 2);
    assert.equal(s.calibration.length, 2);
    assert.deepEqual(s.calibration.map((b) => [b.count, b.observedRate]), [[2, 0.5], [2, 0.5]]);
    assert.ok(Math.abs(s.calibration[0].meanPredicted! - (1 - s1 + 0.5) / 2) < 1e-15);
  });

  it('when examples are drawn from one of two configs, then that config has the lower log-loss and the higher AUC', async () => {
    const ex = asExamples(exampleRows(300, 10, 7));
    const { summaries } = await evaluateExamples(
      [
        { label: 'truth', config: weightsConfig({ ...TRUE_WEIGHTS }) },
        { label: 'default', config: parseConfigObject({}) },
      ],
      ex,
    );
    assert.deepEqual(summaries.map((s) => s.config), ['truth', 'default']);
    const [truth, other] = summaries;
    assert.ok(truth.log_loss < other.log_loss, `truth ${truth.log_loss} vs default ${other.log_loss}`);
    assert.ok(truth.auc > other.auc, `truth ${truth.auc} vs default ${other.auc}`);
    assert.ok(Math.abs(truth.mean_pctr - truth.base_rate) < 0.02, `the true model is calibrated: ${truth.mean_pctr} vs ${truth.base_rate}`);
  });

  it('when examples name pipelines, then each is scored by its own pipeline; --pipeline scores all by one; a missing pipeline is reported', async () => {
    const rows = exampleRows(20, 5, 3);
    const ex = [...asExamples(rows.slice(0, 60), 'default'), ...asExamples(rows.slice(60), 'other')];
    const cfg = parseConfigObject({ pipelines: { default: { stages: { EarlyRanker: { weights: ZERO } } }, other: { stages: { EarlyRanker: { weights: { ...ZERO, bias: 1 } } } } } });
    const own = await evaluateExamples([{ label: 'c', config: cfg }], ex);
    assert.deepEqual(own.summaries.map((s) => [s.pipeline, s.examples]), [['default', 60], ['other', 40]]);
    assert.equal(own.summaries[0].mean_pctr, 0.5);
    assert.ok(Math.abs(own.summaries[1].mean_pctr - 1 / (1 + Math.exp(-1))) < 1e-12, 'the other pipeline scored with its own bias');
    const forced = await evaluateExamples([{ label: 'c', config: cfg }], ex, ['default']);
    assert.deepEqual(forced.summaries.map((s) => [s.pipeline, s.examples]), [['default', 100]]);
    const lacking = await evaluateExamples([{ label: 'only-default', config: weightsConfig(ZERO) }], ex);
    assert.deepEqual(lacking.missing, [{ config: 'only-default', pipeline: 'other', examples: 40 }]);
    assert.equal(lacking.summaries.length, 1);
  });

  it("when the EarlyRanker serves an ONNX model, then the examples' pCTRs are the model's, computed through the serving path", async () => {
    const ex = asExamples(exampleRows(5, 4, 11));
    const cfg = parseConfigObject({ pipelines: { default: { stages: { EarlyRanker: { model: { kind: 'onnx', path: fixture('mlp.onnx'), features: [...RANKER_FEATURES] } } } } } });
    const p = await scoreExamples(cfg.pipelines.default, ex);
    ex.forEach((e, i) => {
      const want = mlpPctr(FEATURE_NAMES.map((n) => e.features[n]));
      assert.ok(Math.abs(p[i] - want) < 1e-5, `row ${i}: ${p[i]} vs ${want}`);
    });
    const { summaries } = await evaluateExamples([{ label: 'mlp', config: cfg }], ex);
    assert.equal(summaries[0].model, `onnx:${fixture('mlp.onnx')}`);
  });
});
