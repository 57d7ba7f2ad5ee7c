import { strict as assert } from 'node:assert';
import { pipelineSchema } from '../../src/config/schema';
import { captureFeatures, modelKind, modelVersion, type FeatureRowSink } from '../../src/pipeline/feature-capture';
import { SOURCE_BIT, type Candidate, type RankedFeaturesSink, type StageContext } from '../../src/pipeline/types';
import { EarlyRanker, ecpm, pctr, type RankerFeatures } from '../../src/stages/ranking/early-ranker';
import { formatBatch, type FeatureBatch, type FeatureLogRow } from '../../src/telemetry/feature-log';
import { adTable, cand, defaultPipeline, FixedPopularity, GatherVectors, makeContext, MapVectors } from '../fixtures/stage-context';

const { Ann, Targeting, Popularity } = SOURCE_BIT;

/** A sink that keeps what it was given. */
class Rows implements FeatureRowSink {
  readonly requests: FeatureLogRow[][] = [];
  lostRows = 0;
  record(batch: FeatureBatch): void {
    // Read back as the log would write them.
    this.requests.push(
      formatBatch(batch)
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as FeatureLogRow),
    );
  }
  lost(n: number): void {
    this.lostRows += n;
  }
}

function rankerSetup(vectors: MapVectors) {
  const ads = adTable(Array.from({ length: 12 }, (_, id) => ({ id, bid_micros: 1_000_000 + id * 37_000, quality: 0.3 + (id % 4) * 0.2, ctr_prior: 0.004 * (id + 1) })));
  for (let id = 0; id < 12; id++) vectors.set(id, [Math.sin(id), Math.cos(id * 1.3), 0.2 * id - 1]);
  const popularity = new FixedPopularity(new Map([[2, 0.03], [7, 0.011]]));
  const pipeline = defaultPipeline();
  pipeline.stages.EarlyRanker = { ...pipeline.stages.EarlyRanker, keep: 4 };
  return { ads, popularity, pipeline, vectors };
}

function candidates(): Candidate[] {
  // Ann's own similarity for some; the ranker computes the rest.
  return Array.from({ length: 12 }, (_, id) => cand(id, id % 3 === 0 ? Ann : id % 3 === 1 ? Targeting | Popularity : Targeting, id % 3 === 0 ? { annScore: 0.1 * id + 0.05 } : {}));
}

describe('feature capture', () => {
  for (const [name, make] of [
    ['per-id vectors', () => new MapVectors(3, 'ip')],
    ['batch-read vectors', () => new GatherVectors(3, 'ip')],
  ] as const) {
    it(`when the EarlyRanker runs with a sink (${name}), then it hands over its kept list, every candidate, and the features that give each one its score`, () => {
      const { ads, popularity, pipeline, vectors } = rankerSetup(make());
      let got: { kept: readonly Candidate[]; ranked: readonly Candidate[]; features: RankerFeatures[] } | undefined;
      const sink: RankedFeaturesSink = (kept, ranked, featuresOf) => {
        got = { kept, ranked, features: ranked.map(featuresOf) };
      };
      const ctx: StageContext = { ...makeContext({ ads, vectors, popularity, pipeline, nowMs: 5_000, query: { embedding: Float32Array.from([0.3, -0.2, 0.9]) } }), rankedFeatures: sink };
      const out = new EarlyRanker().run(ctx, candidates()) as Candidate[]; // the linear model answers synchronously
      assert.ok(got);
      assert.equal(got.kept, out);
      assert.equal(got.ranked.length, 12);
      assert.equal(out.length, 4);
      const w = pipeline.stages.EarlyRanker.weights;
      got.ranked.forEach((c, i) => {
        const f = got!.features[i];
        assert.equal(ecpm(ads.bidMicros(c.id), pctr(w, f)), c.score, `ad ${c.id}: the score is the model's on the features handed over`);
        assert.ok(f.ann_similarity !== 0, `ad ${c.id} has a similarity`);
        assert.equal(f.source_ann, c.id % 3 === 0 ? 1 : 0);
        assert.equal(f.source_popularity, c.id % 3 === 1 ? 1 : 0);
      });
    });
  }

  it('when the EarlyRanker runs without a sink, then nothing is asked of it (the unsampled path)', () => {
    const { ads, popularity, pipeline } = rankerSetup(new MapVectors(3, 'ip'));
    const out = new EarlyRanker().run(makeContext({ ads, popularity, pipeline }), candidates()) as Candidate[];
    assert.equal(out.length, 4);
  });

  it('when a sampled request is captured, then every kept candidate is a row with its position, and cut ones as the cut sample draws', () => {
    const ads = adTable([0, 1, 2, 3, 4, 5].map((id) => ({ id })));
    const all = [0, 1, 2, 3, 4, 5].map((id) => cand(id, Ann, { score: 10 - id }));
    const kept = [all[0], all[1]];
    const sink = new Rows();
    const draws = [0.05, 0.5, 0.09, 0.95];
    const capture = captureFeatures(sink, ads, { requestId: 'req', pipeline: 'p', modelVersion: 'v7/linear', timeMs: 123, cutSample: 0.1 }, () => draws.shift()!);
    const featuresOf = (c: Candidate) => ({ ann_similarity: c.id / 10, ctr_prior_logit: -1, popularity_rate: 0, quality: 0.5, source_ann: 1, source_targeting: 0, source_popularity: 0 });
    capture(kept, all, featuresOf);
    assert.equal(sink.requests.length, 1);
    const rows = sink.requests[0];
    assert.deepEqual(
      rows.map((r) => [r.ad_id, r.position, r.kept, r.score]),
      [
        ['ad0', 1, true, 10],
        ['ad1', 2, true, 9],
        ['ad2', 0, false, 8],
        ['ad4', 0, false, 6],
      ],
    );
    assert.deepEqual(rows[3], { time_ms: 123, request_id: 'req', ad_id: 'ad4', model_version: 'v7/linear', pipeline: 'p', position: 0, kept: false, score: 6, features: featuresOf(all[4]) });
  });

  it('when the cut sample is 0, or nothing was cut, then only kept rows are written; when building rows throws, then the sink counts them lost and nothing escapes', () => {
    const ads = adTable([0, 1, 2].map((id) => ({ id })));
    const all = [0, 1, 2].map((id) => cand(id, Ann, { score: 3 - id }));
    const sink = new Rows();
    const f = () => ({ ann_similarity: 0, ctr_prior_logit: 0, popularity_rate: 0, quality: 0, source_ann: 0, source_targeting: 0, source_popularity: 0 });
    captureFeatures(sink, ads, { requestId: 'a', pipeline: 'p', modelVersion: 'v', timeMs: 0, cutSample: 0 })(all.slice(0, 1), all, f);
    captureFeatures(sink, ads, { requestId: 'b', pipeline: 'p', modelVersion: 'v', timeMs: 0, cutSample: 1 })(all, all, f);
    assert.deepEqual(sink.requests.map((rows) => rows.map((r) => r.position)), [[1], [1, 2, 3]]);
    assert.doesNotThrow(() =>
      captureFeatures(sink, ads, { requestId: 'c', pipeline: 'p', modelVersion: 'v', timeMs: 0, cutSample: 1 })(all.slice(0, 2), all, () => {
        throw new Error('no features');
      }),
    );
    assert.equal(sink.lostRows, 2);
    assert.equal(sink.requests.length, 2);
  });

  it("when a pipeline's EarlyRanker names a model kind, then model_version carries it; without one it is linear", () => {
    const p = pipelineSchema.parse({});
    assert.equal(modelKind(p), 'linear');
    assert.equal(modelVersion('2026-01-01.1', p), '2026-01-01.1/linear');
    const onnx = { ...p, stages: { ...p.stages, EarlyRanker: { ...p.stages.EarlyRanker, model: { kind: 'onnx', path: 'm.onnx' } as never } } };
    assert.equal(modelVersion('v2', onnx), 'v2/onnx');
  });
});
