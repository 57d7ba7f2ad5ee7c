/**
 * Prometheus metrics end to end: the /metrics endpoint of a real server is scraped over HTTP;
 * every series the service defines is there, and counters and gauges move with Retrieves,
 * degraded answers, refused and shed calls and Admin writes.
 */
import { strict as assert } from 'node:assert';
import * as http from 'node:http';
import * as grpc from '@grpc/grpc-js';
import { METRIC_NAMES } from '../../src/telemetry/metrics';
import { row } from '../fixtures/catalog';
import { freePort, rpcError, sleep, startE2eServer, type AdMsg, type E2eServer } from '../fixtures/e2e-server';

const DIM = 8;


/** GET `path` on 127.0.0.1:`port`: status, content type and body. */
function get(port: number, path: string, method = 'GET'): Promise<{ status: number; contentType: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, contentType: String(res.headers['content-type'] ?? ''), body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** One sample of the exposition text. */
interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses Prometheus text exposition (no timestamps, as prom-client writes it). */
function parse(text: string): { samples: Sample[]; types: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line.startsWith('# TYPE ')) {
      const [, , name, type] = line.split(' ');
      types.set(name, type);
      continue;
    }
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `unparsable line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return { samples, types };
}

/** A scrape, with lookups by name and label subset. */
class Scrape {
  readonly samples: Sample[];
  readonly types: Map<string, string>;
  constructor(readonly text: string) {
    ({ samples: this.samples, types: this.types } = parse(text));
  }
  /** Samples named `name` whose labels include `labels`. */
  find(name: string, labels: Record<string, string> = {}): Sample[] {
    return this.samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  }
  /** The value of the one sample matching (0 when there is none: a counter not yet incremented). */
  value(name: string, labels: Record<string, string> = {}): number {
    const found = this.find(name, labels);
    assert.ok(found.length <= 1, `${name} ${JSON.stringify(labels)} matches ${found.length} samples`);
    return found[0]?.value ?? 0;
  }
  /** Asserts exactly one sample matches and returns its value. */
  one(name: string, labels: Record<string, string> = {}): number {
    const found = this.find(name, labels);
    assert.equal(found.length, 1, `${name} ${JSON.stringify(labels)} matches ${found.length} samples`);
    return found[0].value;
  }
}

describe('metrics', () => {
  let s: E2eServer;
  let port: number;
  const scrape = async (): Promise<Scrape> => {
    const r = await get(port, '/metrics');
    assert.equal(r.status, 200);
    assert.match(r.contentType, /^text\/plain/);
    return new Scrape(r.body);
  };
  const embedding = (seed: number) => Array.from({ length: DIM }, (_, i) => Math.cos(seed * 1.3 + i));
  const retrieve = (seed: number, extra: Record<string, unknown> = {}) =>
    s.retrieval.retrieve({ user_id: `u-${seed}`, user_embedding: embedding(seed), num_results: 10, ...extra }, { deadlineMs: 10_000 });
  const RETRIEVE_OK = { service: 'funnel.v1.Retrieval', method: 'Retrieve', code: 'OK' };

  before(async () => {
    port = await freePort();
    s = await startE2eServer({
      rows: Array.from({ length: 40 }, (_, n) => row(n, DIM)),
      config: {
        version: 'metrics-v1',
        limits: { max_in_flight: 1, shed_event_loop_lag_ms: 0 },
        pipelines: {
          default: {},
          ann_slow: { stages: { Ann: { fault: { delay_ms: 300 }, timeout_ms: 20 } } },
          targeting_slow: { stages: { Targeting: { fault: { delay_ms: 1000 }, timeout_ms: 5000 } } },
        },
      },
      metricsPort: port,
      tracing: { env: {} },
    });
    assert.equal(s.running.metricsPort, port);
    await retrieve(0);
  });
  after(async () => {
    await s?.stop();
  });

  it('when scraped, then every metric the service defines is there, with its type, next to the Node.js defaults', async () => {
    const m = await scrape();
    for (const name of METRIC_NAMES) assert.ok(m.types.has(name), `no # TYPE line for ${name}`);
    assert.equal(m.types.get('funnel_rpc_requests_total'), 'counter');
    assert.equal(m.types.get('funnel_rpc_duration_seconds'), 'histogram');
    assert.equal(m.types.get('funnel_stage_duration_seconds'), 'histogram');
    assert.equal(m.types.get('funnel_inflight_requests'), 'gauge');
    assert.ok(m.types.has('process_cpu_user_seconds_total'));
    assert.ok(m.types.has('nodejs_eventloop_lag_seconds'));

    assert.ok(m.one('funnel_rpc_requests_total', RETRIEVE_OK) >= 1);
    assert.ok(m.find('funnel_rpc_duration_seconds_bucket', { ...RETRIEVE_OK, le: '+Inf' }).length === 1);
    assert.ok(m.one('funnel_rpc_duration_seconds_count', RETRIEVE_OK) >= 1);
    for (const stage of ['Eligibility', 'Ann', 'Targeting', 'Popularity', 'Merge', 'Filters', 'EarlyRanker', 'Diversifier']) {
      assert.ok(m.one('funnel_stage_duration_seconds_bucket', { stage, pipeline: 'default', status: 'ok', le: '+Inf' }) >= 1, stage);
      assert.ok(m.one('funnel_stage_runs_total', { stage, pipeline: 'default', status: 'ok' }) >= 1, stage);
      assert.equal(m.find('funnel_stage_candidates_in_total', { stage, pipeline: 'default' }).length, 1, stage);
      assert.equal(m.find('funnel_stage_candidates_out_total', { stage, pipeline: 'default' }).length, 1, stage);
    }
    assert.ok(m.one('funnel_stage_candidates_out_total', { stage: 'Eligibility', pipeline: 'default' }) >= 40);
    assert.ok(m.one('funnel_retrieve_total', { pipeline: 'default', arm: 'none' }) >= 1);
    assert.equal(m.one('funnel_inflight_requests'), 0);
    assert.ok(m.one('funnel_event_loop_lag_seconds') >= 0);
    assert.equal(m.one('funnel_index_size', { index: 'ads' }), 40);
    assert.equal(m.one('funnel_index_size', { index: 'servable' }), 40);
    assert.equal(m.one('funnel_index_size', { index: 'ann_vectors' }), 40);
    assert.equal(m.find('funnel_index_size', { index: 'targeting' }).length, 1);
    assert.ok(m.one('funnel_index_bytes', { index: 'ann' }) > 0);
    assert.deepEqual(m.find('funnel_config_info').map((x) => [x.labels.version, x.value]), [['metrics-v1', 1]]);
    assert.equal(m.one('funnel_config_reloads_total', { result: 'ok' }), 0);
    assert.equal(m.one('funnel_config_reloads_total', { result: 'error' }), 0);
    assert.equal(m.one('funnel_data_seq'), s.running.state.seq);
  });

  it('when more Retrieves are answered, then the RPC, stage and funnel counters move by as many', async () => {
    const before = await scrape();
    for (let i = 1; i <= 3; i++) await retrieve(i);
    const after = await scrape();
    const delta = (name: string, labels: Record<string, string>) => after.value(name, labels) - before.value(name, labels);
    assert.equal(delta('funnel_rpc_requests_total', RETRIEVE_OK), 3);
    assert.equal(delta('funnel_rpc_duration_seconds_count', RETRIEVE_OK), 3);
    assert.equal(delta('funnel_rpc_duration_seconds_bucket', { ...RETRIEVE_OK, le: '+Inf' }), 3);
    assert.ok(delta('funnel_rpc_duration_seconds_sum', RETRIEVE_OK) > 0);
    assert.equal(delta('funnel_retrieve_total', { pipeline: 'default', arm: 'none' }), 3);
    assert.equal(delta('funnel_stage_runs_total', { stage: 'Ann', pipeline: 'default', status: 'ok' }), 3);
    assert.equal(delta('funnel_stage_duration_seconds_count', { stage: 'Ann', pipeline: 'default', status: 'ok' }), 3);
    assert.equal(delta('funnel_stage_candidates_in_total', { stage: 'Eligibility', pipeline: 'default' }), 3 * 40);
    assert.equal(delta('funnel_stage_candidates_out_total', { stage: 'Eligibility', pipeline: 'default' }), 3 * 40);
    assert.ok(delta('funnel_stage_candidates_out_total', { stage: 'Ann', pipeline: 'default' }) > 0);
    assert.ok(delta('funnel_stage_candidates_out_total', { stage: 'Diversifier', pipeline: 'default' }) > 0);
    assert.equal(delta('funnel_retrieve_degraded_total', { pipeline: 'default', arm: 'none' }), 0);
  });

  it('when a Retrieve is degraded by the Ann stage, then the degraded counters name Ann and its pipeline', async () => {
    const before = await scrape();
    const res = await retrieve(5, { pipeline: 'ann_slow' });
    assert.deepEqual(res.degraded_stages, ['Ann']);
    const after = await scrape();
    const delta = (name: string, labels: Record<string, string>) => after.value(name, labels) - before.value(name, labels);
    assert.equal(delta('funnel_degraded_stages_total', { stage: 'Ann', pipeline: 'ann_slow' }), 1);
    assert.equal(delta('funnel_retrieve_degraded_total', { pipeline: 'ann_slow', arm: 'explicit' }), 1);
    assert.equal(delta('funnel_retrieve_total', { pipeline: 'ann_slow', arm: 'explicit' }), 1);
    assert.equal(delta('funnel_stage_runs_total', { stage: 'Ann', pipeline: 'ann_slow', status: 'timeout' }), 1);
    assert.equal(delta('funnel_rpc_requests_total', RETRIEVE_OK), 1);
    assert.equal(after.find('funnel_degraded_stages_total', { stage: 'Targeting' }).length, 0);
  });

  it('when a Retrieve is refused as INVALID_ARGUMENT, then the RPC counters count it under that code only', async () => {
    const before = await scrape();
    const err = await rpcError(s.retrieval.retrieve({ user_embedding: [1, 2, 3] }));
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    const after = await scrape();
    const invalid = { service: 'funnel.v1.Retrieval', method: 'Retrieve', code: 'INVALID_ARGUMENT' };
    assert.equal(after.value('funnel_rpc_requests_total', invalid) - before.value('funnel_rpc_requests_total', invalid), 1);
    assert.equal(after.value('funnel_rpc_duration_seconds_count', invalid) - before.value('funnel_rpc_duration_seconds_count', invalid), 1);
    assert.equal(after.value('funnel_rpc_requests_total', RETRIEVE_OK), before.value('funnel_rpc_requests_total', RETRIEVE_OK));
  });

  it('when an Admin write lands, then funnel_data_seq and the index sizes follow it', async () => {
    const before = await scrape();
    const r = await s.admin.upsertAds({ ads: [row(1000, DIM) as AdMsg] });
    assert.equal(r.inserted, 1);
    const after = await scrape();
    assert.equal(after.one('funnel_data_seq'), Number(r.seq));
    assert.ok(after.one('funnel_data_seq') > before.one('funnel_data_seq'));
    assert.equal(after.one('funnel_index_size', { index: 'ads' }), before.one('funnel_index_size', { index: 'ads' }) + 1);
    const upsert = { service: 'funnel.v1.Admin', method: 'UpsertAds', code: 'OK' };
    assert.equal(after.value('funnel_rpc_requests_total', upsert) - before.value('funnel_rpc_requests_total', upsert), 1);
  });

  it('when a call is in flight and max_in_flight is 1, then the gauge shows it and the next call is shed and counted', async () => {
    const before = await scrape();
    const slow = retrieve(6, { pipeline: 'targeting_slow' });
    // The slow call is in flight once the server counts it (its Targeting stage sleeps 1 s).
    for (let i = 0; s.running.server.inFlightCount === 0; i++) {
      assert.ok(i < 2000, 'the slow call never started');
      await sleep(5);
    }
    const during = await scrape();
    assert.equal(during.one('funnel_inflight_requests'), 1);
    const err = await rpcError(retrieve(7));
    assert.equal(err.code, grpc.status.RESOURCE_EXHAUSTED);
    const res = await slow;
    assert.equal(res.pipeline, 'targeting_slow');
    assert.deepEqual(res.degraded_stages, []);
    const after = await scrape();
    assert.equal(after.value('funnel_shed_requests_total', { reason: 'max_in_flight' }) - before.value('funnel_shed_requests_total', { reason: 'max_in_flight' }), 1);
    const exhausted = { service: 'funnel.v1.Retrieval', method: 'Retrieve', code: 'RESOURCE_EXHAUSTED' };
    assert.equal(after.value('funnel_rpc_requests_total', exhausted) - before.value('funnel_rpc_requests_total', exhausted), 1);
    assert.equal(after.one('funnel_inflight_requests'), 0);
  });

  it('when /metrics is asked with another method or another path is asked, then it answers 405 or 404', async () => {
    assert.equal((await get(port, '/metrics', 'POST')).status, 405);
    assert.equal((await get(port, '/nope')).status, 404);
    assert.equal((await get(port, '/metrics?x=1')).status, 200);
  });

  it('when request-log lines are counted, then funnel_request_log_lines_total moves by as many under each result (both series exist from the start)', async () => {
    const before = await scrape();
    assert.equal(before.types.get('funnel_request_log_lines_total'), 'counter');
    assert.equal(before.find('funnel_request_log_lines_total', { result: 'written' }).length, 1);
    assert.equal(before.find('funnel_request_log_lines_total', { result: 'dropped' }).length, 1);
    s.running.metrics.requestLogLines('written', 5);
    s.running.metrics.requestLogLines('dropped', 2);
    s.running.metrics.requestLogLines('written', 1);
    const after = await scrape();
    const delta = (result: string) => after.one('funnel_request_log_lines_total', { result }) - before.one('funnel_request_log_lines_total', { result });
    assert.equal(delta('written'), 6);
    assert.equal(delta('dropped'), 2);
  });
});
