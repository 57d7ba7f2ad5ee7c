import * as assert from 'node:assert/strict';
import {
  ClusterRow,
  cpuMsPerRequest,
  describeFailures,
  meanOverlap,
  overlapAt,
  parsePublishTimes,
  parseReplicaStartup,
  parseRootBanner,
  ratio,
  tableCells,
  tableHeaders,
  withRatios,
} from '../../bench/lib/cluster-report';

function row(over: Partial<ClusterRow>): ClusterRow {
  return {
    system: 'node',
    phase: 'max',
    target_qps: null,
    outstanding: 16,
    offered_per_s: 1000,
    ok_per_s: 1000,
    ok: 5000,
    p50_ms: 10,
    p95_ms: 20,
    p99_ms: 30,
    max_ms: 40,
    error_count: 0,
    errors: {},
    unsent: 0,
    cap_reached: false,
    seconds: 5,
    cpu_ms_per_request: { node: 0.8 },
    cpu_cores: { node: 0.8 },
    cluster_cpu_ms_per_request: null,
    nats_cpu_cores: null,
    loadgen_cpu_cores: 0.3,
    mean_candidates: 50,
    degraded_fraction: 0,
    degraded_stages: {},
    qps_ratio_vs_node: null,
    p99_ratio_vs_node: null,
    ...over,
  };
}

describe('bench:cluster report', () => {
  it('when the root prints its serving line, then host and port are read from it', () => {
    const line = 'funnel root serving on 127.0.0.1:37147 (2 shards, 1+1 replicas; metrics off; tracing off)';
    assert.deepEqual(parseRootBanner(line), { host: '127.0.0.1', port: 37147 });
    assert.deepEqual(parseRootBanner('funnel root serving on [::1]:50051'), { host: '::1', port: 50051 });
  });

  it("when another line is printed, then it is not taken for the root's serving line", () => {
    assert.equal(parseRootBanner('funnel serving on 127.0.0.1:1 (1 ads, dim 4, seq 1)'), undefined);
    assert.equal(parseRootBanner('{"level":30,"msg":"listening"}'), undefined);
  });

  it("when ingest --nats prints its time line, then validate, publish and total are read; without it, nothing", () => {
    const out =
      'published 100000 rows from c.jsonl to nats://127.0.0.1:1 (stream FUNNEL) for 2 shards (50000 / 50000 rows): ...\n' +
      'time: validate 2.4s, publish 4.6s, total 7.0s\n';
    assert.deepEqual(parsePublishTimes(out), { validate: 2.4, publish: 4.6, total: 7 });
    assert.deepEqual(parsePublishTimes('nothing here\n'), {});
  });

  it("when a replica logs its bootstrap, index and catalog records, then their seconds are read and other lines skipped", () => {
    const lines = [
      'not json',
      '{"level":30,"msg":"replica catching up from the stream before serving","applied":0}',
      '{"level":30,"shard":"0/2","applied":127,"seconds":4.338,"from":0,"to":253,"msg":"replica bootstrapped from the stream"}',
      '{"level":30,"how":"rebuilt","reason":"no index file","applied":50000,"seconds":4.117,"vectors":50000,"msg":"ann index ready"}',
      '{"level":30,"ads":50000,"seconds":0.683,"msg":"catalog loaded"}',
      'null',
    ];
    assert.deepEqual(parseReplicaStartup(lines), { streamSeconds: 4.338, applied: 127, indexSeconds: 4.117, indexHow: 'rebuilt', loadSeconds: 0.683 });
    assert.deepEqual(parseReplicaStartup([]), {});
  });

  it('when the other answer holds some of the reference top N, then overlap@N is their share, order ignored', () => {
    assert.equal(overlapAt(['a', 'b', 'c', 'd'], ['d', 'x', 'b', 'a'], 4), 0.75);
    // Only the first n of each side count.
    assert.equal(overlapAt(['a', 'b', 'c', 'd'], ['c', 'd', 'a', 'b'], 2), 0);
    // A short reference is measured over what it holds.
    assert.equal(overlapAt(['a', 'b'], ['b'], 10), 0.5);
    assert.equal(overlapAt([], ['a'], 10), undefined);
  });

  it('when requests are compared, then the mean leaves out empty reference answers and counts them', () => {
    const m = meanOverlap(
      [
        [['a', 'b'], ['a', 'b']],
        [['a', 'b'], ['a', 'z']],
        [[], ['a']],
      ],
      2,
    );
    assert.deepEqual(m, { mean: 0.75, compared: 2, emptyReference: 1 });
    assert.deepEqual(meanOverlap([], 10), { mean: null, compared: 0, emptyReference: 0 });
  });

  it('when CPU seconds and OK counts are given, then CPU per request is in milliseconds, null without OK answers or a reading', () => {
    assert.equal(cpuMsPerRequest(2, 1000), 2);
    assert.equal(cpuMsPerRequest(2, 0), null);
    assert.equal(cpuMsPerRequest(undefined, 10), null);
    assert.equal(ratio(3, 2), 1.5);
    assert.equal(ratio(3, 0), null);
    assert.equal(ratio(null, 2), null);
  });

  it('when calls failed or were not sent, then the errors cell counts both, largest status first', () => {
    assert.equal(describeFailures({}, 0), '0');
    assert.equal(describeFailures({ UNAVAILABLE: 1, DEADLINE_EXCEEDED: 10 }, 2), '13 (DEADLINE_EXCEEDED 10, UNAVAILABLE 1, unsent 2)');
  });

  it('when cluster rows meet node rows of the same phase, then max QPS and p99 ratios are set on the cluster rows only', () => {
    const rows = withRatios([
      row({ system: 'node', phase: 'max', ok_per_s: 1200, p99_ms: 30 }),
      row({ system: 'node', phase: 'rate', target_qps: 200, ok_per_s: 200, p99_ms: 4 }),
      row({ system: 'cluster', phase: 'max', ok_per_s: 300, p99_ms: 90 }),
      row({ system: 'cluster', phase: 'rate', target_qps: 200, ok_per_s: 200, p99_ms: 10 }),
      row({ system: 'cluster', phase: 'rate', target_qps: 400, ok_per_s: 400, p99_ms: 10 }),
    ]);
    assert.deepEqual(rows.map((r) => [r.qps_ratio_vs_node, r.p99_ratio_vs_node]), [
      [null, null],
      [null, null],
      [0.25, 3],
      [null, 2.5],
      [null, null],
    ]);
  });

  it('when a row is printed, then it has one cell per header, with a CPU column per shard and - where a figure does not apply', () => {
    assert.deepEqual(tableHeaders(2), [
      'system', 'phase', 'OK/s', 'p50 ms', 'p99 ms', 'errors', 'CPU ms/req: node', 'root', 'shard-0', 'shard-1', 'root+shards', 'max QPS cl/node', 'p99 cl/node',
    ]);
    const node = tableCells(row({}), 2);
    assert.equal(node.length, tableHeaders(2).length);
    assert.deepEqual(node, ['node', 'max (16 outstanding)', '1,000', '10.00', '30.00', '0', '0.800', '-', '-', '-', '-', '-', '-']);
    const cluster = tableCells(
      row({
        system: 'cluster',
        phase: 'rate',
        target_qps: 400,
        errors: { UNAVAILABLE: 2 },
        cpu_ms_per_request: { root: 2, 'shard-0': 1.25, 'shard-1': null },
        cluster_cpu_ms_per_request: 3.25,
        p99_ratio_vs_node: 2.5,
      }),
      2,
    );
    assert.deepEqual(cluster, ['root+2 shards', '400/s', '1,000', '10.00', '30.00', '2 (UNAVAILABLE 2)', '-', '2.000', '1.250', '-', '3.250', '-', '2.50x']);
  });
});
