/**
 * Retrieve end to end: validation errors name the field, degraded answers stay eligible, debug
 * stage stats, overload, deadlines, health, reflection, and the unpacked embedding encoding.
 */
import { strict as assert } from 'node:assert';
import * as grpc from '@grpc/grpc-js';
import * as protobuf from 'protobufjs';
import { row } from '../fixtures/catalog';
import { invariantViolations, type OracleRow } from '../fixtures/eligibility-oracle';
import {
  adIds,
  attrs,
  listServicesByReflection,
  rpcError,
  startE2eServer,
  type E2eServer,
  type RetrieveRequestMsg,
  type RetrieveResponseMsg,
} from '../fixtures/e2e-server';

const DIM = 8;

/** 60 ads: 0-9 paused, 10-19 for country US only, 20-29 for everyone but US, the rest untargeted. */
function catalogRows(): Record<string, unknown>[] {
  return Array.from({ length: 60 }, (_, n) => {
    if (n < 10) return row(n, DIM, { status: 'paused' });
    if (n < 20) return row(n, DIM, { targeting: [{ country: { any_of: ['US'] } }] });
    if (n < 30) return row(n, DIM, { targeting: [{ country: { none_of: ['US'] } }] });
    return row(n, DIM);
  });
}

function oracleRows(rows: Record<string, unknown>[]): Map<string, OracleRow> {
  return new Map(rows.map((r) => [r.ad_id as string, r as unknown as OracleRow]));
}

function embedding(seed: number): number[] {
  return Array.from({ length: DIM }, (_, i) => Math.cos(seed * 3.1 + i * 0.9));
}

function assertEligible(res: RetrieveResponseMsg, req: RetrieveRequestMsg, rows: Map<string, OracleRow>, limit: number): void {
  const problems = invariantViolations(res, req, rows, new Map(), limit);
  assert.deepEqual(problems, [], problems.join('\n'));
}

const slow = (stage: string, delay_ms: number, timeout_ms: number) => ({ stages: { [stage]: { fault: { delay_ms }, timeout_ms } } });

describe('e2e: Retrieve', function () {
  const rows = catalogRows();
  const byId = oracleRows(rows);

  describe('on a server with small limits and fault-injected pipelines', () => {
    let s: E2eServer;
    const rpcs: { method: string; code: grpc.status }[] = [];
    before(async () => {
      s = await startE2eServer({
        rows,
        config: {
          limits: { max_num_results: 100, max_exclusions: 5, max_attributes: 3, max_attribute_values: 4, max_string_bytes: 32 },
          pipelines: {
            default: {},
            ann_slow: slow('Ann', 200, 20),
            popularity_slow: slow('Popularity', 200, 20),
            targeting_broken: { stages: { Targeting: { fault: { error_rate: 1 } } } },
            outlives_deadline: slow('Targeting', 1500, 5000),
          },
        },
        hooks: { onRpc: (method, code) => rpcs.push({ method, code }) },
      });
    });
    after(async () => {
      await s?.stop();
    });

    const invalidCases: { name: string; req: () => RetrieveRequestMsg; field: string }[] = [
      { name: 'the embedding has the wrong length', req: () => ({ user_embedding: [1, 2, 3] }), field: 'user_embedding' },
      { name: 'the embedding holds NaN', req: () => ({ user_embedding: [...embedding(1).slice(0, DIM - 1), NaN] }), field: 'user_embedding' },
      { name: 'the embedding holds infinity', req: () => ({ user_embedding: [Infinity, ...embedding(1).slice(1)] }), field: 'user_embedding' },
      { name: 'num_results is over the max', req: () => ({ num_results: 101 }), field: 'num_results' },
      { name: 'the pipeline is unknown', req: () => ({ pipeline: 'nope' }), field: 'pipeline' },
      { name: 'exclude_ad_ids is over max_exclusions', req: () => ({ exclude_ad_ids: ['a', 'b', 'c', 'd', 'e', 'f'] }), field: 'exclude_ad_ids' },
      { name: 'exclude_advertiser_ids is over max_exclusions', req: () => ({ exclude_advertiser_ids: ['a', 'b', 'c', 'd', 'e', 'f'] }), field: 'exclude_advertiser_ids' },
      { name: 'blocked_categories is over max_exclusions', req: () => ({ blocked_categories: ['a', 'b', 'c', 'd', 'e', 'f'] }), field: 'blocked_categories' },
      { name: 'attributes are over max_attributes', req: () => ({ attributes: attrs({ a: ['1'], b: ['1'], c: ['1'], d: ['1'] }) }), field: 'attributes' },
      { name: 'an attribute has more than max_attribute_values values', req: () => ({ attributes: attrs({ country: ['a', 'b', 'c', 'd', 'e'] }) }), field: 'attributes' },
      { name: 'request_id is over max_string_bytes', req: () => ({ request_id: 'x'.repeat(33) }), field: 'request_id' },
      { name: 'user_id is over max_string_bytes', req: () => ({ user_id: 'x'.repeat(33) }), field: 'user_id' },
      { name: 'an attribute value is over max_string_bytes', req: () => ({ attributes: attrs({ country: ['x'.repeat(33)] }) }), field: 'attributes' },
      { name: 'an attribute name is over max_string_bytes', req: () => ({ attributes: attrs({ ['n'.repeat(33)]: ['US'] }) }), field: 'attributes' },
      { name: 'an excluded ad id is over max_string_bytes', req: () => ({ exclude_ad_ids: ['x'.repeat(33)] }), field: 'exclude_ad_ids' },
      { name: 'a blocked category is over max_string_bytes', req: () => ({ blocked_categories: ['x'.repeat(33)] }), field: 'blocked_categories' },
    ];
    for (const c of invalidCases) {
      it(`when ${c.name}, then Retrieve answers INVALID_ARGUMENT naming ${c.field}`, async () => {
        const err = await rpcError(s.retrieval.retrieve(c.req()));
        assert.equal(err.code, grpc.status.INVALID_ARGUMENT, err.message);
        assert.ok(err.details.includes(c.field), `details ${JSON.stringify(err.details)} do not name ${c.field}`);
      });
    }

    it('when a request is at every limit, then it is answered', async () => {
      const res = await s.retrieval.retrieve({
        request_id: 'r'.repeat(32),
        num_results: 100,
        exclude_ad_ids: ['ad-30', 'ad-31', 'ad-32', 'ad-33', 'ad-34'],
        attributes: attrs({ country: ['CA', 'US', 'DE', 'x'.repeat(32)], platform: ['ios'], community: ['c'] }),
        user_embedding: embedding(2),
      });
      assert.equal(res.request_id, 'r'.repeat(32));
      assert.ok(res.candidates.length > 0);
    });

    it('when the request is ordinary, then every candidate is eligible, with no duplicates and sources named', async () => {
      const req: RetrieveRequestMsg = { attributes: attrs({ country: ['CA'] }), user_embedding: embedding(3), num_results: 20, exclude_ad_ids: ['ad-40'], blocked_categories: ['travel'] };
      const res = await s.retrieval.retrieve(req);
      assert.ok(res.candidates.length > 0);
      assert.ok(!res.degraded, `degraded: ${res.degraded_stages.join(',')}`);
      assertEligible(res, req, byId, 20);
      const scores = res.candidates.map((c) => c.score ?? 0);
      for (const c of res.candidates) assert.ok(c.sources.length > 0, `${c.ad_id} has no sources`);
      assert.ok(scores.every(Number.isFinite));
    });

    it('when num_results is 0, then the configured default (50) bounds the answer', async () => {
      const req: RetrieveRequestMsg = { attributes: attrs({ country: ['CA'] }), user_embedding: embedding(4) };
      const res = await s.retrieval.retrieve(req);
      assertEligible(res, req, byId, 50);
    });

    it('when the Ann stage is slower than its timeout_ms, then the answer is degraded naming Ann and every candidate is still eligible', async () => {
      const req: RetrieveRequestMsg = { pipeline: 'ann_slow', attributes: attrs({ country: ['US'] }), user_embedding: embedding(5), num_results: 30 };
      const res = await s.retrieval.retrieve(req);
      assert.equal(res.degraded, true);
      assert.deepEqual(res.degraded_stages, ['Ann']);
      assert.ok(res.candidates.length > 0, 'the other sources still answer');
      assertEligible(res, req, byId, 30);
      for (const c of res.candidates) assert.ok(!c.sources.includes('Ann'), `${c.ad_id} sourced by the timed-out Ann stage`);
    });

    it('when the Popularity stage is slower than its timeout_ms, then the answer is degraded naming Popularity', async () => {
      const req: RetrieveRequestMsg = { pipeline: 'popularity_slow', attributes: attrs({ country: ['DE'] }), num_results: 30 };
      const res = await s.retrieval.retrieve(req);
      assert.equal(res.degraded, true);
      assert.deepEqual(res.degraded_stages, ['Popularity']);
      assertEligible(res, req, byId, 30);
    });

    it('when the Targeting stage always fails, then the answer is degraded naming Targeting and the Ann candidates are eligible', async () => {
      const req: RetrieveRequestMsg = { pipeline: 'targeting_broken', attributes: attrs({ country: ['CA'] }), user_embedding: embedding(6), num_results: 30, debug: true };
      const res = await s.retrieval.retrieve(req);
      assert.equal(res.degraded, true);
      assert.deepEqual(res.degraded_stages, ['Targeting']);
      assert.ok(res.candidates.length > 0, 'Ann still answers');
      assertEligible(res, req, byId, 30);
      for (const c of res.candidates) assert.ok(!c.sources.includes('Targeting'), `${c.ad_id} sourced by the failed Targeting stage`);
      assert.equal(res.stages.find((st) => st.name === 'Targeting')?.status, 'error');
    });

    it('when debug is true, then stages carry every stage name with a status and counts', async () => {
      const res = await s.retrieval.retrieve({ attributes: attrs({ country: ['CA'] }), user_embedding: embedding(7), debug: true });
      const names = res.stages.map((st) => st.name);
      for (const n of ['Eligibility', 'Ann', 'Targeting', 'Popularity', 'Filters', 'EarlyRanker', 'Diversifier']) assert.ok(names.includes(n), `no stage ${n} in ${names.join(',')}`);
      for (const st of res.stages) assert.ok(['ok', 'timeout', 'error', 'skipped'].includes(st.status ?? ''), `${st.name}: status ${String(st.status)}`);
      assert.equal(res.stages.find((st) => st.name === 'Ann')?.status, 'ok');
      const div = res.stages.find((st) => st.name === 'Diversifier');
      assert.equal(div?.candidates_out ?? 0, res.candidates.length);
    });

    it('when debug is false, then no stages are returned', async () => {
      const res = await s.retrieval.retrieve({ attributes: attrs({ country: ['CA'] }) });
      assert.deepEqual(res.stages, []);
    });

    it('when there is no user_embedding, then Ann is skipped (not degraded)', async () => {
      const res = await s.retrieval.retrieve({ attributes: attrs({ country: ['CA'] }), debug: true });
      assert.ok(!res.degraded);
      assert.equal(res.stages.find((st) => st.name === 'Ann')?.status, 'skipped');
      for (const c of res.candidates) assert.ok(!c.sources.includes('Ann'));
    });

    it('when the embedding is sent unpacked or split in two packed runs, then the answer equals the packed one', async () => {
      const e = embedding(8);
      const packed = await s.retrieval.retrieve({ request_id: 'p', user_embedding: e, num_results: 25 });
      const unpacked = protobuf.Writer.create();
      unpacked.uint32((1 << 3) | 2).string('p');
      for (const v of e) unpacked.uint32((4 << 3) | 5).float(v);
      unpacked.uint32((5 << 3) | 0).uint32(25);
      const split = protobuf.Writer.create();
      split.uint32((1 << 3) | 2).string('p');
      split.uint32((4 << 3) | 2).fork();
      for (const v of e.slice(0, 3)) split.float(v);
      split.ldelim();
      split.uint32((5 << 3) | 0).uint32(25);
      split.uint32((4 << 3) | 2).fork();
      for (const v of e.slice(3)) split.float(v);
      split.ldelim();
      for (const w of [unpacked, split]) {
        const res = await s.retrieval.retrieveRaw(Buffer.from(w.finish()));
        assert.deepEqual(adIds(res), adIds(packed));
        assert.deepEqual(
          res.candidates.map((c) => c.score),
          packed.candidates.map((c) => c.score),
        );
        assert.deepEqual(
          res.candidates.map((c) => c.sources),
          packed.candidates.map((c) => c.sources),
        );
      }
      assert.ok(packed.candidates.some((c) => c.sources.includes('Ann')), 'the embedding was used');
    });

    it('when the bytes are not a RetrieveRequest, then INVALID_ARGUMENT', async () => {
      const err = await rpcError(s.retrieval.retrieveRaw(Buffer.from([0x0a, 0x7f, 0x01])));
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    });

    it('when a stage is slower than its timeout but the deadline is long, then on_deadline degraded answers degraded and eligible', async () => {
      const req: RetrieveRequestMsg = { pipeline: 'ann_slow', attributes: attrs({ country: ['CA'] }), user_embedding: embedding(9), num_results: 10 };
      const res = await s.retrieval.retrieve(req, { deadlineMs: 5000 });
      assert.equal(res.degraded, true);
      assert.ok(res.degraded_stages.includes('Ann'));
      assertEligible(res, req, byId, 10);
    });

    it('when on_deadline is degraded and a stage would outlive the request deadline, then the client gets a degraded answer in time', async () => {
      // Targeting sleeps 1500 ms with a 5000 ms stage timeout, so only the 400 ms request deadline
      // can cut it: with on_deadline "degraded" the contract promises a degraded partial answer.
      rpcs.length = 0;
      const req: RetrieveRequestMsg = { pipeline: 'outlives_deadline', attributes: attrs({ country: ['CA'] }), user_embedding: embedding(10), num_results: 10 };
      let res: RetrieveResponseMsg;
      try {
        res = await s.retrieval.retrieve(req, { deadlineMs: 400 });
      } catch (err) {
        // Let the server finish the call to report what its handler answered.
        const deadline = Date.now() + 3000;
        while (!rpcs.some((r) => r.method === 'Retrieve') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        const server = rpcs.find((r) => r.method === 'Retrieve');
        assert.fail(
          `the client got ${grpc.status[(err as grpc.ServiceError).code]} instead of a degraded answer; ` +
            `the server's handler answered ${server ? grpc.status[server.code] : 'nothing'} after the deadline had passed`,
        );
      }
      assert.equal(res.degraded, true);
      assert.ok(res.degraded_stages.includes('Targeting'));
      assertEligible(res, req, byId, 10);
    });

    it('when health is checked, then "", funnel.v1.Retrieval and funnel.v1.Admin are SERVING', async () => {
      for (const name of ['', 'funnel.v1.Retrieval', 'funnel.v1.Admin']) assert.equal(await s.health.check(name), 'SERVING', name);
    });

    it('when health is checked for an unknown service, then NOT_FOUND', async () => {
      const err = await rpcError(s.health.check('no.such.Service'));
      assert.equal(err.code, grpc.status.NOT_FOUND);
    });

    for (const version of ['v1', 'v1alpha'] as const) {
      it(`when reflection ${version} lists services, then funnel.v1.Retrieval and funnel.v1.Admin are there`, async () => {
        const names = await listServicesByReflection(s.address, version);
        for (const n of ['funnel.v1.Retrieval', 'funnel.v1.Admin']) assert.ok(names.includes(n), `${n} not in ${names.join(', ')}`);
      });
    }

    it('when reflection lists services, then the always-on grpc.health.v1.Health is there too (grpcurl can call it without a proto file)', async () => {
      const names = await listServicesByReflection(s.address, 'v1');
      assert.ok(names.includes('grpc.health.v1.Health'), `grpc.health.v1.Health not in ${names.join(', ')}`);
    });
  });

  describe('on a server with max_in_flight 2, on_deadline error and a 300 ms Targeting stage', () => {
    let s: E2eServer;
    before(async () => {
      s = await startE2eServer({
        rows,
        config: { limits: { max_in_flight: 2, on_deadline: 'error' }, pipelines: { default: slow('Targeting', 300, 1000) } },
      });
    });
    after(async () => {
      await s?.stop();
    });

    it('when 20 Retrieves arrive at once, then some get RESOURCE_EXHAUSTED at once, the others OK, and a later call is OK', async () => {
      const req: RetrieveRequestMsg = { attributes: attrs({ country: ['CA'] }), num_results: 5 };
      const outcomes = await Promise.allSettled(Array.from({ length: 20 }, () => s.retrieval.retrieve(req, { deadlineMs: 20_000 })));
      const ok = outcomes.filter((o) => o.status === 'fulfilled').length;
      const codes = outcomes.flatMap((o) => (o.status === 'rejected' ? [(o.reason as grpc.ServiceError).code] : []));
      assert.ok(ok >= 1 && ok <= 19, `${ok} OK of 20`);
      assert.ok(codes.length > 0 && codes.every((c) => c === grpc.status.RESOURCE_EXHAUSTED), `codes: ${codes.map((c) => grpc.status[c]).join(',')}`);
      for (const o of outcomes) if (o.status === 'fulfilled') assertEligible(o.value, req, byId, 5);
      const after = await s.retrieval.retrieve(req, { deadlineMs: 20_000 });
      assert.ok(after.candidates.length > 0);
    });

    it('when the request deadline (50 ms) runs out in a 300 ms stage, then DEADLINE_EXCEEDED, and the server answers later calls', async () => {
      const err = await rpcError(s.retrieval.retrieve({ attributes: attrs({ country: ['CA'] }) }, { deadlineMs: 50 }));
      assert.equal(err.code, grpc.status.DEADLINE_EXCEEDED);
      const res = await s.retrieval.retrieve({ attributes: attrs({ country: ['CA'] }), num_results: 5 }, { deadlineMs: 20_000 });
      assert.ok(res.candidates.length > 0);
    });
  });
});
