/**
 * Overload end to end: the real server on a loopback port with a tiny adaptive limit, flooded
 * with concurrent Retrieves from a real grpc-js client. Everything is asserted by count, never by
 * time: the excess is refused RESOURCE_EXHAUSTED (counted by reason), every other call is OK (none
 * DEADLINE_EXCEEDED under a generous deadline), refused calls were neither decoded nor ran a stage,
 * the server answers afterwards, and a reload of the limits applies to the next calls. Then the
 * wait for a slot (all OK when it is long enough, queue_timeout refusals when it is not), and
 * grpc.max_concurrent_streams: one connection's streams past the cap wait in the client instead of
 * reaching the handler.
 */
import { strict as assert } from 'node:assert';
import * as grpc from '@grpc/grpc-js';
import { parseConfigObject } from '../../src/config/load';
import type { ShedReason } from '../../src/grpc/admission';
import type { StageObserver } from '../../src/pipeline/run-stage';
import { row } from '../fixtures/catalog';
import { attrs, rpcError, sleep, startE2eServer, type E2eServer, type RetrieveRequestMsg } from '../fixtures/e2e-server';

const DIM = 8;
const rows = () => Array.from({ length: 60 }, (_, n) => row(n, DIM));
/** Every call's Targeting stage sleeps this long (inside a 5 s stage timeout), so calls overlap. */
const STAGE_DELAY_MS = 60;
const REQ: RetrieveRequestMsg = { attributes: attrs({ country: ['CA'] }), user_embedding: Array.from({ length: DIM }, (_, i) => Math.cos(i)), num_results: 5 };
/** A deadline no call here comes near: DEADLINE_EXCEEDED would mean a call was queued. */
const GENEROUS_MS = 60_000;

/** Counts stage runs and the most funnels running at once (Eligibility starts each run). */
function stageCounter(): { observer: StageObserver; runs: () => number; maxConcurrent: () => number } {
  let runs = 0;
  let running = 0;
  let max = 0;
  return {
    observer: {
      start(name) {
        if (name !== 'Eligibility') return () => undefined;
        runs++;
        running++;
        max = Math.max(max, running);
        let ended = false;
        return () => {
          if (!ended) running--;
          ended = true;
        };
      },
    },
    runs: () => runs,
    maxConcurrent: () => max,
  };
}

/** Fires `n` Retrieves at once; the status name of each. */
async function flood(s: E2eServer, n: number): Promise<string[]> {
  const outcomes = await Promise.allSettled(Array.from({ length: n }, () => s.retrieval.retrieve(REQ, { deadlineMs: GENEROUS_MS })));
  return outcomes.map((o) => (o.status === 'fulfilled' ? 'OK' : grpc.status[(o.reason as grpc.ServiceError).code] ?? String(o.reason)));
}

function tally(codes: string[]): Record<string, number> {
  const t: Record<string, number> = {};
  for (const c of codes) t[c] = (t[c] ?? 0) + 1;
  return t;
}

describe('e2e: overload', function () {
  describe('on a server whose adaptive limit is 2 calls in flight, no waiting (a 60 ms stage in every call)', () => {
    let s: E2eServer;
    const stages = stageCounter();
    const shed: Partial<Record<ShedReason, number>> = {};
    before(async () => {
      s = await startE2eServer({
        rows: rows(),
        config: {
          limits: { max_in_flight: 128, shed_event_loop_lag_ms: 0, admission: { adaptive: true, min_limit: 2, initial_limit: 2, queue_timeout_ms: 0 } },
          pipelines: { default: { stages: { Targeting: { fault: { delay_ms: STAGE_DELAY_MS }, timeout_ms: 5000 } } } },
        },
        hooks: {
          observer: stages.observer,
          onShed: (reason) => {
            shed[reason] = (shed[reason] ?? 0) + 1;
          },
        },
      });
    });
    after(async () => {
      await s?.stop();
    });

    it('when both slots are taken, then a malformed request is refused RESOURCE_EXHAUSTED before it is decoded; once they are free it is INVALID_ARGUMENT', async () => {
      const garbage = Buffer.from([0x22, 0xff, 0xff, 0xff, 0xff, 0x0f]);
      const slow = [s.retrieval.retrieve(REQ, { deadlineMs: GENEROUS_MS }), s.retrieval.retrieve(REQ, { deadlineMs: GENEROUS_MS })];
      for (let i = 0; s.running.server.inFlightCount < 2; i++) {
        assert.ok(i < 4000, `the two calls never were in flight together (${s.running.server.inFlightCount})`);
        await sleep(5);
      }
      const refusedErr = await rpcError(s.retrieval.retrieveRaw(garbage, { deadlineMs: GENEROUS_MS }));
      assert.equal(refusedErr.code, grpc.status.RESOURCE_EXHAUSTED, refusedErr.message);
      assert.match(refusedErr.details, /over capacity: 2 Retrieve calls in flight, the adaptive limit now \(limits\.admission\)/);
      await Promise.all(slow);
      const invalidErr = await rpcError(s.retrieval.retrieveRaw(garbage, { deadlineMs: GENEROUS_MS }));
      assert.equal(invalidErr.code, grpc.status.INVALID_ARGUMENT, invalidErr.message);
    });

    it('when 40 Retrieves arrive at once, three times over, then some are RESOURCE_EXHAUSTED, all others OK, and refused calls ran no stage', async () => {
      const runsBefore = stages.runs();
      const shedBefore = shed.concurrency_limit ?? 0;
      const codes: string[] = [];
      for (let wave = 0; wave < 3; wave++) codes.push(...(await flood(s, 40)));
      const t = tally(codes);
      assert.deepEqual(Object.keys(t).sort(), ['OK', 'RESOURCE_EXHAUSTED'], JSON.stringify(t));
      assert.ok(t.RESOURCE_EXHAUSTED >= 3, JSON.stringify(t));
      assert.ok(t.OK >= 6, JSON.stringify(t));
      assert.equal(stages.runs() - runsBefore, t.OK, 'funnel runs: one per OK call, none for a refused one');
      assert.equal((shed.concurrency_limit ?? 0) - shedBefore, t.RESOURCE_EXHAUSTED, `shed by reason: ${JSON.stringify(shed)}`);
    });

    it('when the flood is over, then calls one at a time are all answered OK', async () => {
      for (let i = 0; i < 5; i++) {
        const res = await s.retrieval.retrieve(REQ, { deadlineMs: GENEROUS_MS });
        assert.ok(res.candidates.length > 0);
      }
      assert.equal(s.running.server.inFlightCount, 0);
    });

    it('when a reload turns the adaptive limit off (max_in_flight 1000), then the next flood is all OK', async () => {
      const config = s.running.server.config;
      s.running.server.config = parseConfigObject(
        { limits: { max_in_flight: 1000, shed_event_loop_lag_ms: 0, admission: { adaptive: false } }, pipelines: { default: { stages: { Targeting: { fault: { delay_ms: STAGE_DELAY_MS }, timeout_ms: 5000 } } } } },
        'reload',
      );
      try {
        assert.deepEqual(tally(await flood(s, 40)), { OK: 40 });
      } finally {
        s.running.server.config = config;
      }
    });
  });

  describe('on a server whose adaptive limit is 2 and calls may wait for a slot', () => {
    let s: E2eServer;
    let queueTimeoutMs = 30_000;
    const stages = stageCounter();
    const shed: Partial<Record<ShedReason, number>> = {};
    const start = async (timeoutMs: number) => {
      queueTimeoutMs = timeoutMs;
      s = await startE2eServer({
        rows: rows(),
        config: {
          limits: { max_in_flight: 128, shed_event_loop_lag_ms: 0, admission: { min_limit: 2, initial_limit: 2, queue_timeout_ms: queueTimeoutMs } },
          pipelines: { default: { stages: { Targeting: { fault: { delay_ms: STAGE_DELAY_MS }, timeout_ms: 5000 } } } },
        },
        hooks: {
          observer: stages.observer,
          onShed: (reason) => {
            shed[reason] = (shed[reason] ?? 0) + 1;
          },
        },
      });
    };
    afterEach(async () => {
      await s?.stop();
    });

    it('when 12 Retrieves arrive at once and the wait may be long (30 s), then all are OK, never more than 2 running at once', async () => {
      await start(30_000);
      const t = tally(await flood(s, 12));
      assert.deepEqual(t, { OK: 12 });
      assert.equal(stages.runs(), 12);
      assert.ok(stages.maxConcurrent() <= 2, `${stages.maxConcurrent()} funnels ran at once`);
      assert.deepEqual(shed, {});
    });

    it('when 12 Retrieves arrive at once and the wait is shorter than a call (20 ms), then waiters past it are RESOURCE_EXHAUSTED as queue_timeout, the rest OK', async () => {
      await start(20);
      const t = tally(await flood(s, 12));
      assert.deepEqual(Object.keys(t).sort(), ['OK', 'RESOURCE_EXHAUSTED'], JSON.stringify(t));
      assert.ok(t.OK >= 2, JSON.stringify(t));
      assert.equal(shed.queue_timeout, t.RESOURCE_EXHAUSTED, JSON.stringify(shed));
      const res = await s.retrieval.retrieve(REQ, { deadlineMs: GENEROUS_MS });
      assert.ok(res.candidates.length > 0);
    });
  });

  describe('on a server with grpc.max_concurrent_streams 2 and no concurrency limit to speak of', () => {
    let s: E2eServer;
    const stages = stageCounter();
    before(async () => {
      s = await startE2eServer({
        rows: rows(),
        config: {
          limits: { max_concurrent_streams: 2, max_in_flight: 1000, shed_event_loop_lag_ms: 0, admission: { adaptive: false } },
          pipelines: { default: { stages: { Targeting: { fault: { delay_ms: STAGE_DELAY_MS }, timeout_ms: 5000 } } } },
        },
        hooks: { observer: stages.observer },
      });
    });
    after(async () => {
      await s?.stop();
    });

    it('when one connection sends 12 Retrieves at once, then all are OK and never more than 2 ran at once', async () => {
      const t = tally(await flood(s, 12));
      assert.deepEqual(t, { OK: 12 });
      assert.equal(stages.runs(), 12);
      assert.ok(stages.maxConcurrent() <= 2, `${stages.maxConcurrent()} funnels ran at once`);
    });
  });
});
