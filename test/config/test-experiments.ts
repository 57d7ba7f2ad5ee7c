/**
 * Experiments: FNV-1a bucketing of user ids, routing to arms, the schema's checks of the arms,
 * and end to end, the arm and pipeline a Retrieve was served by (answer, span, metrics).
 */
import { strict as assert } from 'node:assert';
import { SpanKind } from '@opentelemetry/api';
import { AlwaysOnSampler, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { fnv1a32, route } from '../../src/config/experiments';
import { ConfigError, parseConfigObject } from '../../src/config/load';
import { row } from '../fixtures/catalog';
import { startE2eServer, type E2eServer } from '../fixtures/e2e-server';

/** FNV-1a 32 written independently (BigInt arithmetic), for comparison. */
function referenceFnv1a32(s: string): number {
  let h = 0x811c9dc5n;
  for (const b of Buffer.from(s, 'utf8')) {
    h ^= BigInt(b);
    h = (h * 0x01000193n) % 0x100000000n;
  }
  return Number(h);
}

/** The `path: reason` issues of a config that must be refused. */
function issuesOf(raw: unknown): string[] {
  try {
    parseConfigObject(raw, 'test');
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.issues;
  }
  assert.fail('expected the config to be refused');
}

const twoPipelines = { default: {}, treat: { inherits: 'default', stages: { Popularity: { enabled: false } } } };

describe('experiments', () => {
  describe('fnv1a32', () => {
    it('when given the published test vectors, then it returns their hashes', () => {
      assert.equal(fnv1a32(''), 0x811c9dc5);
      assert.equal(fnv1a32('a'), 0xe40c292c);
      assert.equal(fnv1a32('foobar'), 0xbf9cf968);
    });

    it('when given any string, then it hashes its UTF-8 bytes to an unsigned 32-bit integer', () => {
      for (const s of ['user-1', 'é', '日本語', 'salt:user_42', '\u{1F600}', 'x'.repeat(1000)]) {
        const h = fnv1a32(s);
        assert.ok(Number.isInteger(h) && h >= 0 && h < 2 ** 32, s);
        assert.equal(h, referenceFnv1a32(s), s);
      }
    });
  });

  describe('route', () => {
    const config = parseConfigObject({
      pipelines: twoPipelines,
      experiments: {
        salt: 's1',
        buckets: 10,
        arms: [
          { name: 'control', pipeline: 'default', buckets: [0, 3] },
          { name: 'treatment', pipeline: 'treat', buckets: [4, 7] },
        ],
      },
    });

    it('when the request names a pipeline, then it wins over the arms (arm "explicit", no bucket)', () => {
      assert.deepEqual(route(config, 'user-1', 'default'), { pipeline: 'default', arm: 'explicit', bucket: -1 });
      assert.deepEqual(route(config, '', 'treat'), { pipeline: 'treat', arm: 'explicit', bucket: -1 });
    });

    it('when there are no arms or no user id, then the default pipeline serves with arm "none"', () => {
      const plain = parseConfigObject({ pipelines: twoPipelines, default_pipeline: 'treat' });
      assert.deepEqual(route(plain, 'user-1', ''), { pipeline: 'treat', arm: 'none', bucket: -1 });
      assert.deepEqual(route(config, '', ''), { pipeline: 'default', arm: 'none', bucket: -1 });
    });

    it("when a user id is routed, then its bucket is FNV-1a of salt:user_id modulo buckets and the bucket's arm serves it", () => {
      const seen = new Set<string>();
      for (let i = 0; i < 200; i++) {
        const userId = `user-${i}`;
        const r = route(config, userId, '');
        const bucket = fnv1a32(`s1:${userId}`) % 10;
        assert.equal(r.bucket, bucket, userId);
        const expected = bucket <= 3 ? ['default', 'control'] : bucket <= 7 ? ['treat', 'treatment'] : ['default', 'none'];
        assert.deepEqual([r.pipeline, r.arm], expected, userId);
        seen.add(r.arm);
        assert.deepEqual(route(config, userId, ''), r, 'the same user routes the same way every time');
      }
      assert.deepEqual([...seen].sort(), ['control', 'none', 'treatment']);
    });

    it('when the salt changes, then users move to other buckets', () => {
      const other = parseConfigObject({ ...config, experiments: { ...config.experiments, salt: 's2' } });
      let moved = 0;
      for (let i = 0; i < 100; i++) if (route(config, `user-${i}`, '').bucket !== route(other, `user-${i}`, '').bucket) moved++;
      assert.ok(moved > 50, `${moved} of 100 moved`);
    });

    it('when 10,000 user ids are bucketed, then the buckets fill evenly (chi-square below the 0.1% critical value)', () => {
      const buckets = 10;
      const counts = new Array<number>(buckets).fill(0);
      const n = 10_000;
      for (let i = 0; i < n; i++) counts[fnv1a32(`:user-${i}`) % buckets]++;
      const expected = n / buckets;
      const chi2 = counts.reduce((sum, c) => sum + (c - expected) ** 2 / expected, 0);
      // 9 degrees of freedom: P(chi2 > 27.88) = 0.001.
      assert.ok(chi2 < 27.88, `chi2 ${chi2.toFixed(2)}, counts ${counts.join(' ')}`);
      const halves = parseConfigObject({
        pipelines: twoPipelines,
        experiments: { arms: [{ name: 'a', pipeline: 'default', buckets: [0, 49] }, { name: 'b', pipeline: 'treat', buckets: [50, 99] }] },
      });
      let a = 0;
      for (let i = 0; i < n; i++) if (route(halves, `user-${i}`, '').arm === 'a') a++;
      assert.ok(a > 0.47 * n && a < 0.53 * n, `arm a got ${a} of ${n}`);
    });
  });

  describe('schema', () => {
    const arm = (name: string, pipeline: string, buckets: [number, number]) => ({ name, pipeline, buckets });
    const config = (arms: unknown[], buckets = 100) => ({ pipelines: twoPipelines, experiments: { buckets, arms } });

    it('when arms are valid, then defaults are filled and the arms are kept in order', () => {
      const c = parseConfigObject(config([arm('a', 'default', [0, 9]), arm('b', 'treat', [10, 99])]));
      assert.equal(c.experiments.salt, '');
      assert.equal(c.experiments.buckets, 100);
      assert.deepEqual(c.experiments.arms.map((x) => x.name), ['a', 'b']);
      assert.deepEqual(parseConfigObject({}).experiments, { salt: '', buckets: 100, arms: [] });
    });

    const refused: { name: string; raw: unknown; issue: RegExp }[] = [
      { name: 'ranges overlap', raw: config([arm('a', 'default', [0, 50]), arm('b', 'treat', [50, 99])]), issue: /^experiments\.arms\[1\]\.buckets: overlaps arm "a"$/ },
      { name: 'a range lies inside another', raw: config([arm('a', 'default', [0, 99]), arm('b', 'treat', [10, 20])]), issue: /^experiments\.arms\[1\]\.buckets: overlaps arm "a"$/ },
      { name: 'the pipeline is unknown', raw: config([arm('a', 'nope', [0, 9])]), issue: /^experiments\.arms\[0\]\.pipeline: names no pipeline \(have: default, treat\)$/ },
      { name: 'to is not below buckets', raw: config([arm('a', 'default', [0, 10])], 10), issue: /^experiments\.arms\[0\]\.buckets: must be \[from, to\] with from <= to < experiments\.buckets \(10\)$/ },
      { name: 'from is above to', raw: config([arm('a', 'default', [5, 4])]), issue: /^experiments\.arms\[0\]\.buckets: must be \[from, to\]/ },
      { name: 'a name appears twice', raw: config([arm('a', 'default', [0, 9]), arm('a', 'treat', [10, 19])]), issue: /^experiments\.arms\[1\]\.name: arm "a" appears twice$/ },
      { name: 'a name has other characters', raw: config([arm('a b', 'default', [0, 9])]), issue: /^experiments\.arms\[0\]\.name: must be letters, digits, _ \. -$/ },
      { name: 'a bucket is negative', raw: config([arm('a', 'default', [-1, 9])]), issue: /^experiments\.arms\[0\]\.buckets\[0\]: / },
      { name: 'buckets is zero', raw: config([], 0), issue: /^experiments\.buckets: / },
      { name: 'an arm has an unknown key', raw: config([{ ...arm('a', 'default', [0, 9]), weight: 1 }]), issue: /^experiments\.arms\[0\]: / },
    ];
    for (const c of refused) {
      it(`when ${c.name}, then the config is refused with an issue naming the path`, () => {
        const issues = issuesOf(c.raw);
        assert.ok(issues.some((i) => c.issue.test(i)), issues.join('\n'));
      });
    }
  });

  describe('end to end', () => {
    const exporter = new InMemorySpanExporter();
    const processor = new SimpleSpanProcessor(exporter);
    let s: E2eServer;
    const DIM = 4;
    const raw = {
      limits: { shed_event_loop_lag_ms: 0 },
      pipelines: twoPipelines,
      experiments: {
        salt: 'e2e',
        buckets: 100,
        arms: [
          { name: 'control', pipeline: 'default', buckets: [0, 49] },
          { name: 'treatment', pipeline: 'treat', buckets: [50, 99] },
        ],
      },
    };
    const config = parseConfigObject(raw);

    before(async () => {
      s = await startE2eServer({
        rows: Array.from({ length: 30 }, (_, n) => row(n, DIM)),
        config: raw,
        tracing: { env: {}, processors: [processor], sampler: new AlwaysOnSampler() },
      });
    });
    after(async () => {
      await s?.stop();
    });

    it("when users are bucketed into two arms, then each Retrieve is served by its arm's pipeline, named on the span and in the metrics", async () => {
      const served = new Map<string, number>();
      for (let i = 0; i < 24; i++) {
        exporter.reset();
        const userId = `user-${i}`;
        const expected = route(config, userId, '');
        const res = await s.retrieval.retrieve({ user_id: userId, user_embedding: [1, 0, 0, 0], debug: true });
        assert.equal(res.pipeline, expected.pipeline, userId);
        const popularity = res.stages.find((st) => st.name === 'Popularity');
        assert.equal(popularity?.status, expected.pipeline === 'treat' ? 'skipped' : 'ok', userId);
        await processor.forceFlush();
        const [server] = exporter.getFinishedSpans().filter((sp) => sp.kind === SpanKind.SERVER);
        assert.equal(server.attributes['funnel.pipeline'], expected.pipeline, userId);
        assert.equal(server.attributes['funnel.experiment.arm'], expected.arm, userId);
        assert.equal(server.attributes['funnel.experiment.bucket'], expected.bucket, userId);
        served.set(expected.arm, (served.get(expected.arm) ?? 0) + 1);
      }
      assert.deepEqual([...served.keys()].sort(), ['control', 'treatment']);
      const text = await s.running.metrics.text();
      assert.ok(text.includes(`funnel_retrieve_total{pipeline="default",arm="control"} ${served.get('control')}`), text);
      assert.ok(text.includes(`funnel_retrieve_total{pipeline="treat",arm="treatment"} ${served.get('treatment')}`), text);
    });

    it('when the request names a pipeline, then it is served by it with arm "explicit"', async () => {
      exporter.reset();
      const userId = Array.from({ length: 100 }, (_, i) => `user-${i}`).find((u) => route(config, u, '').pipeline === 'treat')!;
      const res = await s.retrieval.retrieve({ user_id: userId, pipeline: 'default' });
      assert.equal(res.pipeline, 'default');
      await processor.forceFlush();
      const [server] = exporter.getFinishedSpans().filter((sp) => sp.kind === SpanKind.SERVER);
      assert.equal(server.attributes['funnel.experiment.arm'], 'explicit');
      assert.match(await s.running.metrics.text(), /funnel_retrieve_total\{pipeline="default",arm="explicit"\} 1\n/);
    });
  });
});
