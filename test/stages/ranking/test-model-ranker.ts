import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ConfigError, loadConfigFile, parseConfigObject } from '../../../src/config/load';
import { RANKER_FEATURES, type PipelineConfig } from '../../../src/config/schema';
import { SOURCE_BIT, type Candidate } from '../../../src/pipeline/types';
import { EarlyRanker } from '../../../src/stages/ranking/early-ranker';
import { modelBudgetMs } from '../../../src/stages/ranking/model-ranker';
import { stopModelWorkers } from '../../../src/stages/ranking/onnx-host';
import { meanAbsDiff, spearman } from '../../../src/stages/ranking/shadow';
import { tempDir } from '../../fixtures/catalog';
import { fixture, logit, mlpPctr } from '../../fixtures/onnx-models';
import { adTable, cand, FixedPopularity, makeContext, MapVectors, type AdSpec } from '../../fixtures/stage-context';

const { Ann, Targeting, Popularity } = SOURCE_BIT;

const ALL = [...RANKER_FEATURES];

/** A validated pipeline whose EarlyRanker has `ranker` merged in (the model is loaded by the parse). */
function pipeline(ranker: Record<string, unknown>): PipelineConfig {
  return parseConfigObject({ pipelines: { default: { stages: { EarlyRanker: ranker } } } }, 'test').pipelines.default;
}

function onnx(file: string, extra: Record<string, unknown> = {}) {
  return { kind: 'onnx', path: fixture(file), features: ALL, ...extra };
}

/** The ConfigError issues of parsing `ranker`, or [] when it is accepted. */
function refusal(ranker: Record<string, unknown>): string[] {
  try {
    pipeline(ranker);
    return [];
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.issues;
  }
}

const SPECS: AdSpec[] = Array.from({ length: 40 }, (_, id) => ({
  id,
  bid_micros: 500_000 + 37_000 * id,
  quality: (id % 10) / 9,
  ctr_prior: [0, 0.001, 0.01, 0.05, 0.2, 0.9][id % 6],
}));
const EMBEDDING = [0.6, -0.2, 0.35];
const vectorOf = (id: number) => [Math.sin(id * 1.3), Math.cos(id * 0.7), Math.sin(id * 0.4 + 1)];
const rateOf = (id: number) => (id % 4 === 0 ? 0.002 * id : 0);
const sourcesOf = (id: number) => [Ann, Targeting, Popularity, Ann | Targeting, Targeting | Popularity, Ann | Targeting | Popularity][id % 6];

/** A context over SPECS (ip vectors, fixed popularity) with `p`, and its candidates (half with the Ann stage's similarity set). */
function setup(p: PipelineConfig): { ctx: ReturnType<typeof makeContext>; input: Candidate[] } {
  const ads = adTable(SPECS);
  const vectors = new MapVectors(3, 'ip', SPECS.map((s) => [s.id, vectorOf(s.id)] as [number, number[]]));
  const popularity = new FixedPopularity(new Map(SPECS.map((s) => [s.id, rateOf(s.id)])));
  const ctx = makeContext({ ads, vectors, popularity, pipeline: p, query: { embedding: Float32Array.from(EMBEDDING) } });
  const input = SPECS.map((s) => {
    const c = cand(s.id, sourcesOf(s.id));
    if (s.id % 2 === 0) c.annScore = dot(Float32Array.from(EMBEDDING), Float32Array.from(vectorOf(s.id)));
    return c;
  });
  return { ctx, input };
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/** The features of ad `id` as README defines them, computed here from the fixture's inputs. */
function expectedFeatures(id: number): number[] {
  const s = SPECS[id];
  const src = sourcesOf(id);
  return [
    dot(Float32Array.from(EMBEDDING), Float32Array.from(vectorOf(id))),
    logit(s.ctr_prior!),
    rateOf(id),
    s.quality!,
    src & Ann ? 1 : 0,
    src & Targeting ? 1 : 0,
    src & Popularity ? 1 : 0,
  ];
}

const scores = (out: Candidate[]) => new Map(out.map((c) => [c.id, c.score]));

/**
 * Asserts that `score` is eCPM of ad `id` at pCTR `want`, to 2e-6 in pCTR: the model computes in
 * float32 and onnxruntime's Sigmoid is an approximation (absolute error near 1e-7), so a
 * relative bound would fail for small pCTRs.
 */
function assertPctr(id: number, score: number, want: number): void {
  const got = score / ((SPECS[id].bid_micros! / 1e6) * 1000);
  assert.ok(Math.abs(got - want) <= 2e-6, `ad ${id}: pCTR ${got}, expected ${want}`);
}

/** The linear ranker's answer over SETUP's candidates (keep all). */
async function linearRun(): Promise<Candidate[]> {
  const { ctx, input } = setup(pipeline({ keep: 1000 }));
  return new EarlyRanker().run(ctx, input);
}

describe('EarlyRanker models', () => {
  describe('when the model is ONNX', () => {
    it('when the model is the fixture MLP, then every score is bid x the MLP computed here from its known weights', async () => {
      const { ctx, input } = setup(pipeline({ keep: 1000, model: onnx('mlp.onnx') }));
      const out = await new EarlyRanker().run(ctx, input);
      assert.equal(out.length, SPECS.length);
      assert.equal(ctx.notes.get('model'), 'onnx');
      assert.equal(ctx.notes.get('fallback'), undefined);
      let differsFromLinear = 0;
      const linear = scores(await linearRun());
      for (const c of out) {
        assertPctr(c.id, c.score, mlpPctr(expectedFeatures(c.id)));
        if (Math.abs(linear.get(c.id)! - c.score) > 0.01 * c.score) differsFromLinear++;
      }
      assert.ok(differsFromLinear > SPECS.length / 2, 'the MLP should rank unlike the linear weights');
      for (let i = 1; i < out.length; i++) assert.ok(out[i - 1].score >= out[i].score, 'best first');
    });

    it('when the model is the logistic fixture (the default weights, 1-D output), then its scores are the linear ranker’s to float32 precision', async () => {
      const { ctx, input } = setup(pipeline({ keep: 1000, model: onnx('logistic.onnx') }));
      const model = await new EarlyRanker().run(ctx, input);
      const linear = scores(await linearRun());
      for (const c of model) assertPctr(c.id, c.score, linear.get(c.id)! / ((SPECS[c.id].bid_micros! / 1e6) * 1000));
    });

    it('when the config lists a subset of features in its own order, then the model gets exactly those columns in that order', async () => {
      // wrong_input_shape.onnx is sigmoid(-1 + x . [2, 1, 5, 0.5, 0]) over 5 columns: valid for 5 features.
      const order = ['quality', 'ann_similarity', 'popularity_rate', 'ctr_prior_logit', 'source_ann'] as const;
      const { ctx, input } = setup(pipeline({ keep: 1000, model: { kind: 'onnx', path: fixture('wrong_input_shape.onnx'), features: order } }));
      const out = await new EarlyRanker().run(ctx, input);
      for (const c of out) {
        const f = expectedFeatures(c.id);
        const x = order.map((name) => f[RANKER_FEATURES.indexOf(name)]);
        assertPctr(c.id, c.score, 1 / (1 + Math.exp(-(-1 + 2 * x[0] + 1 * x[1] + 5 * x[2] + 0.5 * x[3]))));
      }
    });

    it('when the model fails, then the linear weights score the request, exactly, and the stage notes the fallback', async () => {
      const { ctx, input } = setup(pipeline({ keep: 1000, model: onnx('mlp.onnx', { fault: { delay_ms: 0, error_rate: 1 } }) }));
      const out = await new EarlyRanker().run(ctx, input);
      const linear = await linearRun();
      assert.deepEqual(out.map((c) => [c.id, c.score]), linear.map((c) => [c.id, c.score]));
      assert.match(String(ctx.notes.get('fallback')), /linear weights \(model error: injected model fault\)/);
    });

    it('when the model is late, then the linear weights answer within the stage’s timeout', async () => {
      const { ctx, input } = setup(pipeline({ keep: 1000, timeout_ms: 40, model: onnx('mlp.onnx', { fault: { delay_ms: 2000, error_rate: 0 } }) }));
      const t0 = performance.now();
      const out = await new EarlyRanker().run(ctx, input);
      const ms = performance.now() - t0;
      assert.ok(ms < 40, `answered after ${ms} ms`);
      assert.ok(ms >= modelBudgetMs(40) - 1, `gave up after ${ms} ms, before the budget`);
      const linear = await linearRun();
      assert.deepEqual(out.map((c) => c.score), linear.map((c) => c.score));
      assert.match(String(ctx.notes.get('fallback')), /model timeout: no answer within 35 ms/);
    });

    it('when there are no candidates, then no model runs and nothing is returned', async () => {
      const { ctx } = setup(pipeline({ model: onnx('mlp.onnx') }));
      assert.deepEqual(await new EarlyRanker().run(ctx, []), []);
    });

    it('when the model worker is stopped, then the next run starts another and loads the model again from its file', async () => {
      const p = pipeline({ keep: 1000, timeout_ms: 20_000, model: onnx('mlp.onnx') });
      const first = setup(p);
      const before = await new EarlyRanker().run(first.ctx, first.input);
      await stopModelWorkers();
      const again = setup(p);
      const after = await new EarlyRanker().run(again.ctx, again.input);
      assert.equal(again.ctx.notes.get('fallback'), undefined);
      assert.deepEqual(after.map((c) => [c.id, c.score]), before.map((c) => [c.id, c.score]));
    });

    it('when the same model file is configured twice, then both configs serve from one validated model', async () => {
      const a = pipeline({ model: onnx('mlp.onnx') });
      const b = pipeline({ model: onnx('mlp.onnx') });
      const sa = setup(a);
      const sb = setup(b);
      const ra = await new EarlyRanker().run(sa.ctx, sa.input);
      const rb = await new EarlyRanker().run(sb.ctx, sb.input);
      assert.deepEqual(ra.map((c) => c.score), rb.map((c) => c.score));
    });
  });

  describe('model validation', () => {
    const at = 'pipelines.default.stages.EarlyRanker.model';
    const cases: [string, Record<string, unknown>, RegExp][] = [
      ['the input is not the configured name', onnx('wrong_input_name.onnx', { input: 'features' }), /has no input named "features" \(its inputs: "x"\)/],
      ['the input is not [batch, len(features)]', onnx('wrong_input_shape.onnx'), /input "features" has shape \[batch, 5\]: its second dimension must be 7/],
      ['the input has a fixed batch', onnx('fixed_batch.onnx'), /input "features" has shape \[1, 7\]: its first dimension must be the batch/],
      ['the input is float64', onnx('double_input.onnx'), /input "features" is float64; it must be float32/],
      ['the output is [batch, 2]', onnx('wrong_output_shape.onnx'), /output "pctr" has shape \[batch, 2\]; it must be \[batch\] or \[batch, 1\]/],
      ['the output is outside [0, 1]', onnx('out_of_range.onnx'), /on a probe batch of 1 row\(s\) the model gave -?[0-9.]+ at row 0: pCTR must be finite and in \[0, 1\]/],
      ['the configured output does not exist', onnx('mlp.onnx', { output: 'prob' }), /has no output named "prob" \(its outputs: "pctr"\)/],
      ['the file is missing', onnx('nope.onnx'), /nope\.onnx: cannot read it \(ENOENT\)/],
      ['the file is not ONNX', onnx('generate.py'), /onnxruntime cannot load it: .*protobuf parsing failed/i],
    ];
    for (const [what, model, message] of cases) {
      it(`when ${what}, then the config is refused with a message naming the model and the problem`, () => {
        const issues = refusal({ model });
        assert.equal(issues.length, 1, issues.join('\n'));
        assert.ok(issues[0].startsWith(`${at}: ${model.path}: `), issues[0]);
        assert.match(issues[0], message);
      });
    }

    it('when the wrong-name model is used without naming its input, then it is accepted (the contract fixes no name)', () => {
      assert.deepEqual(refusal({ model: onnx('wrong_input_name.onnx') }), []);
    });

    it('when a feature is unknown or listed twice, then the schema refuses it before any model loads', () => {
      assert.match(refusal({ model: onnx('mlp.onnx', { features: ['ann_similarity', 'bid'] }) }).join('\n'), /model\.features\[1\]: Invalid option/);
      assert.match(refusal({ model: onnx('mlp.onnx', { features: ['quality', 'quality'] }) }).join('\n'), /model\.features: lists a feature twice/);
      assert.match(refusal({ model: { kind: 'linear', path: 'x.onnx' } }).join('\n'), /model: Unrecognized key: "path"/);
      assert.match(refusal({ model: { kind: 'xgboost' } }).join('\n'), /model\.kind: Invalid/);
    });

    it('when the shadow model is broken, then the config is refused naming shadow_model', () => {
      const issues = refusal({ shadow_model: { ...onnx('out_of_range.onnx'), sample: 0.5 } });
      assert.match(issues.join('\n'), /pipelines\.default\.stages\.EarlyRanker\.shadow_model: .*pCTR must be finite and in \[0, 1\]/);
    });

    it('when a pipeline inherits an ONNX model and sets {kind: linear}, then its model is linear (a new kind replaces the block)', () => {
      const c = parseConfigObject(
        { pipelines: { default: { stages: { EarlyRanker: { model: onnx('mlp.onnx') } } }, plain: { inherits: 'default', stages: { EarlyRanker: { model: { kind: 'linear' } } } } } },
        'test',
      );
      assert.deepEqual(c.pipelines.plain.stages.EarlyRanker.model, { kind: 'linear' });
      assert.equal(c.pipelines.default.stages.EarlyRanker.model.kind, 'onnx');
    });

    it('when a config file names a model by a relative path, then it is read from the config file’s directory', () => {
      const dir = tempDir('onnx-config');
      try {
        fs.mkdirSync(path.join(dir, 'models'));
        fs.copyFileSync(fixture('mlp.onnx'), path.join(dir, 'models', 'm.onnx'));
        const file = path.join(dir, 'funnel.yaml');
        fs.writeFileSync(file, `pipelines:\n  default:\n    stages:\n      EarlyRanker:\n        model: {kind: onnx, path: models/m.onnx, features: [${ALL.join(', ')}]}\n`);
        const c = loadConfigFile(file);
        const m = c.pipelines.default.stages.EarlyRanker.model;
        assert.equal(m.kind === 'onnx' && m.path, path.join(dir, 'models', 'm.onnx'));
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  describe('shadow statistics', () => {
    it('when two orders agree, reverse or tie, then Spearman is 1, -1 or undefined', () => {
      assert.equal(spearman([1, 2, 3, 4], [10, 20, 30, 40]), 1);
      assert.equal(spearman([1, 2, 3, 4], [4, 3, 2, 1]), -1);
      assert.equal(spearman([1, 1, 1], [1, 2, 3]), undefined);
      assert.equal(spearman([1], [1]), undefined);
      // Ties share their average rank: ranks [1.5, 1.5, 3] and [1, 2, 3] give r = sqrt(3)/2.
      assert.ok(Math.abs(spearman([5, 5, 9], [1, 2, 3])! - Math.sqrt(3) / 2) < 1e-12);
      assert.equal(meanAbsDiff([0.1, 0.5], [0.2, 0.3]), (0.1 + 0.2) / 2);
    });
  });
});
