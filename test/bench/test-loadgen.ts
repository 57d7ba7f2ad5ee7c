import * as assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { LatencyHistogram } from '../../bench/lib/histogram';
import { HEALTH_CHECK_METHOD, LoadGenerator, PhaseResult, PhaseSpec } from '../../bench/lib/loadgen';
import { mergeResults } from '../../bench/lib/loadgen-pool';
import { openLoopPlan } from '../../bench/lib/schedule';

function result(partial: Partial<PhaseResult>): PhaseResult {
  const empty = new LatencyHistogram().snapshot();
  return {
    ok: 0,
    errors: {},
    unsent: 0,
    capWaits: 0,
    sentInWindow: 0,
    latency: empty,
    sendLag: empty,
    windowSeconds: 2,
    cpuSeconds: 0,
    candidates: 0,
    degraded: 0,
    badResponses: 0,
    degradedStages: {},
    ...partial,
  };
}

describe('bench load generator', () => {
  it('when results of several generators are merged, then counts add up and histograms merge', () => {
    const a = new LatencyHistogram();
    a.record(100);
    const b = new LatencyHistogram();
    b.record(300);
    b.record(500);
    const m = mergeResults([
      result({ ok: 1, latency: a.snapshot(), errors: { UNAVAILABLE: 2 }, cpuSeconds: 1, sentInWindow: 3, degradedStages: { Ann: 1 }, firstError: 'first' }),
      result({ ok: 2, latency: b.snapshot(), errors: { UNAVAILABLE: 1, DEADLINE_EXCEEDED: 4 }, unsent: 3, cpuSeconds: 1.8, sentInWindow: 7, degradedStages: { Ann: 2 } }),
    ]);
    assert.equal(m.ok, 3);
    assert.deepEqual(m.errors, { UNAVAILABLE: 3, DEADLINE_EXCEEDED: 4 });
    assert.equal(m.unsent, 3);
    assert.equal(m.sentInWindow, 10);
    assert.equal(m.latency.count, 3);
    assert.equal(m.latency.maxUs, 500);
    assert.equal(m.cpuSeconds, 2.8);
    assert.equal(m.maxGeneratorCpuShare, 0.9);
    assert.deepEqual(m.degradedStages, { Ann: 3 });
    assert.equal(m.firstError, 'first');
  });

  describe('against an in-process health server', () => {
    let server: grpc.Server;
    let address = '';
    let gen: LoadGenerator;

    before(async () => {
      server = new grpc.Server();
      new HealthImplementation({ '': 'SERVING' }).addToServer(server);
      const port = await new Promise<number>((resolve, reject) =>
        server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
      );
      address = `127.0.0.1:${port}`;
      gen = new LoadGenerator({ address, channels: 2, requests: [], timeoutMs: 5000, generator: 0 });
      await gen.ready(5000);
    });

    after(() => {
      gen.close();
      server.forceShutdown();
    });

    const spec = (over: Partial<PhaseSpec>): PhaseSpec => ({
      method: HEALTH_CHECK_METHOD,
      mode: 'closed',
      concurrency: 4,
      part: 0,
      parts: 1,
      warmupSeconds: 0.1,
      seconds: 0.3,
      startAtEpochMs: Date.now() + 20,
      reportMarks: true,
      ...over,
    });

    it('when a closed loop runs, then calls succeed and both window marks are reported in order', async () => {
      const marks: string[] = [];
      const r = await gen.run(spec({}), (m) => marks.push(m));
      assert.ok(r.ok > 0);
      assert.deepEqual(r.errors, {});
      assert.equal(r.latency.count, r.ok);
      // OK answers in the window were sent in it, or in the warm-up by one of the 4 calls outstanding.
      assert.ok(r.sentInWindow + 4 >= r.ok, `${r.sentInWindow} sent, ${r.ok} OK`);
      assert.deepEqual(marks, ['window-start', 'window-end']);
    });

    it('when an open loop runs, then every measured request is answered, failed or counted unsent', async () => {
      const marks: string[] = [];
      const s = spec({ mode: 'open', rate: 200, concurrency: 64 });
      const r = await gen.run(s, (m) => marks.push(m));
      const plan = openLoopPlan(200, s.warmupSeconds, s.seconds);
      const failed = Object.values(r.errors).reduce((a, b) => a + b, 0);
      assert.equal(r.ok + failed + r.unsent, plan.total - plan.firstMeasured);
      assert.equal(r.sendLag.count + r.unsent, plan.total - plan.firstMeasured);
      // Sends are counted by the clock: the schedule's measured requests, give or take the few a late timer moves across an edge.
      const measured = plan.total - plan.firstMeasured;
      assert.ok(Math.abs(r.sentInWindow - measured) <= Math.max(5, 0.1 * measured), `${r.sentInWindow} sent in the window of ${measured}`);
      assert.deepEqual(marks, ['window-start', 'window-end']);
    });

    it('when the outstanding cap is one, then the accounting still adds up', async () => {
      const s = spec({ mode: 'open', rate: 2000, concurrency: 1, reportMarks: false });
      const r = await gen.run(s);
      const plan = openLoopPlan(2000, s.warmupSeconds, s.seconds);
      const failed = Object.values(r.errors).reduce((a, b) => a + b, 0);
      assert.equal(r.ok + failed + r.unsent, plan.total - plan.firstMeasured);
    });

    it('when the server is unreachable, then calls fail as UNAVAILABLE rather than hang', async () => {
      const dead = new LoadGenerator({ address: '127.0.0.1:1', channels: 1, requests: [], timeoutMs: 2000, generator: 9 });
      try {
        const r = await dead.run(spec({ mode: 'open', rate: 50, concurrency: 8, warmupSeconds: 0, seconds: 0.2 }));
        assert.equal(r.ok, 0);
        assert.ok((r.errors.UNAVAILABLE ?? 0) > 0, JSON.stringify(r.errors));
        assert.match(r.firstError ?? '', /^UNAVAILABLE/);
      } finally {
        dead.close();
      }
    });
  });
});
