/**
 * `funnel serve --workers 2` as a child process: every Admin call's effect is served by every
 * worker once the call answers OK (read-your-writes across workers, seen through Explain and
 * Retrieve on many connections, which the cluster spreads over the workers); a worker killed
 * with SIGKILL is restarted while the service keeps answering; /metrics on one port sums the
 * workers; SIGHUP reaches every worker; SIGTERM drains them all and exits 0.
 */
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { row, tempDir } from '../fixtures/catalog';
import {
  ADMIN_TOKEN,
  adminClient,
  adminMetadata,
  adIds,
  attrs,
  ingestRows,
  retrievalClient,
  sleep,
  type AdMsg,
  type AdminClient,
  type ExplainResponseMsg,
  type RetrievalClient,
} from '../fixtures/e2e-server';

const CLI = path.resolve(__dirname, '..', '..', 'src', 'cli', 'main.js');
const DIM = 4;
/** Connections per test: the cluster hands connections to the workers in turn, so 8 reach both. */
const CONNECTIONS = 8;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function getText(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get(url, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve(body));
      })
      .once('error', reject);
  });
}

/** Sum of a metric's samples whose labels include every given label. */
function metricSum(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^(\w+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const l = m[2] ?? '';
    if (Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitFor(what: string, ok: () => boolean | Promise<boolean>, ms = 60_000): Promise<void> {
  const until = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

interface Cluster {
  proc: ChildProcess;
  address: string;
  metricsUrl: string;
  pids: number[];
  exited: Promise<number | string>;
  stderr(): string;
}

function serveWorkers(dataDir: string, tokenFile: string, metricsPort: number, extra: string[] = []): Promise<Cluster> {
  const proc = spawn(
    process.execPath,
    [CLI, 'serve', '--data', dataDir, '--port', '0', '--workers', '2', '--metrics-port', String(metricsPort), '--admin-token-file', tokenFile, ...extra],
    { env: { ...process.env, FUNNEL_LOG_LEVEL: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  const exited = new Promise<number | string>((resolve) => proc.once('exit', (code, signal) => resolve(code ?? signal ?? 'unknown')));
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise<Cluster>((resolve, reject) => {
    void exited.then((code) => reject(new Error(`funnel serve --workers 2 exited (${code}) before serving:\n${err}`)));
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /funnel serving on (\S+):(\d+) \(.*2 workers, pids (\d+),(\d+);/.exec(out);
      if (!m) return;
      resolve({
        proc,
        address: `127.0.0.1:${m[2]}`,
        metricsUrl: `http://127.0.0.1:${metricsPort}/metrics`,
        pids: [Number(m[3]), Number(m[4])],
        exited,
        stderr: () => err,
      });
    });
  });
}

/** Clients on separate connections (each its own subchannel pool). */
function connections(address: string): { admin: AdminClient; retrieval: RetrievalClient }[] {
  return Array.from({ length: CONNECTIONS }, (_, i) => {
    const options = { 'grpc.use_local_subchannel_pool': 1, 'funnel.test.connection': i };
    return { admin: adminClient(address, ADMIN_TOKEN, { options }), retrieval: retrievalClient(address, { options }) };
  });
}

/** A config named `version` whose stages never time out on a busy test machine (a degraded answer would hide what is tested). */
function config(version: string): string {
  const stages = ['Eligibility', 'Ann', 'Targeting', 'Popularity', 'Filters', 'EarlyRanker', 'Diversifier'];
  return (
    `version: ${version}\n` +
    'limits: { default_deadline_ms: 60000, shed_event_loop_lag_ms: 0 }\n' +
    `pipelines: { default: { stages: { ${stages.map((s) => `${s}: { timeout_ms: 30000 }`).join(', ')} } } }\n`
  );
}

function probeAd(adId: string, probe: string, extra: Partial<AdMsg> = {}): AdMsg {
  return {
    ad_id: adId,
    advertiser_id: `adv-${adId}`,
    campaign_id: 'camp-w',
    category: 'workers',
    bid_micros: 1_500_000,
    embedding: [0.1, 0.2, 0.3, 0.4],
    targeting: [{ attributes: { probe: { any_of: [probe] } } }],
    ...extra,
  };
}

describe('e2e: funnel serve --workers 2', function () {
  let tmp: string;
  let tokenFile: string;
  let configFile: string;
  let cluster: Cluster;
  let conns: { admin: AdminClient; retrieval: RetrievalClient }[] = [];

  before(async () => {
    tmp = tempDir('workers');
    tokenFile = path.join(tmp, 'token');
    fs.writeFileSync(tokenFile, `${ADMIN_TOKEN}\n`);
    configFile = path.join(tmp, 'config.yaml');
    fs.writeFileSync(configFile, config('first'));
    const dataDir = await ingestRows(tmp, Array.from({ length: 12 }, (_, n) => row(n, DIM, { targeting: [{ probe: { any_of: [`base-${n}`] } }] })));
    cluster = await serveWorkers(dataDir, tokenFile, await freePort(), ['--config', configFile]);
    conns = connections(cluster.address);
  });
  after(async () => {
    for (const c of conns) {
      c.admin.close();
      c.retrieval.close();
    }
    if (cluster && cluster.proc.exitCode === null && cluster.proc.signalCode === null) {
      cluster.proc.kill('SIGKILL');
      for (const pid of cluster.pids) if (alive(pid)) process.kill(pid, 'SIGKILL');
    }
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  /** Explains `adId` for a request with probe=`probe` on every connection; each answer's data_seq must reach `seq`. */
  async function explainEverywhere(adId: string, probe: string, seq: number): Promise<ExplainResponseMsg[]> {
    return Promise.all(
      conns.map(async (c, i) => {
        const r = await c.retrieval.explain({ request: { attributes: attrs({ probe: [probe] }), num_results: 10 }, ad_ids: [adId] }, { metadata: adminMetadata() });
        assert.ok(Number(r.response.data_seq) >= seq, `connection ${i} serves data_seq ${r.response.data_seq} after a write acknowledged at ${seq}`);
        assert.deepEqual(r.response.degraded_stages, [], `connection ${i}: a degraded answer proves nothing`);
        return r;
      }),
    );
  }

  function outcomes(rs: ExplainResponseMsg[]): string[] {
    return [...new Set(rs.map((r) => `${r.ads[0].outcome}/${r.ads[0].reason ?? ''}`))];
  }

  it('when an Admin call answers OK, then every worker serves its effect, for every Admin call', async () => {
    const writer = (i: number) => conns[i % CONNECTIONS].admin;
    let r = await writer(0).upsertAds({ ads: [probeAd('w-1', 'p-1', { daily_budget_micros: 10_000 })] });
    assert.deepEqual(outcomes(await explainEverywhere('w-1', 'p-1', Number(r.seq))), ['returned/'], 'an inserted ad is served by every worker');

    r = await writer(1).upsertAds({ ads: [probeAd('w-1', 'p-2', { daily_budget_micros: 10_000 })] });
    assert.deepEqual(outcomes(await explainEverywhere('w-1', 'p-1', Number(r.seq))), ['not_eligible/targeting'], 'the old targeting is gone everywhere');
    assert.deepEqual(outcomes(await explainEverywhere('w-1', 'p-2', Number(r.seq))), ['returned/']);

    let w = await writer(2).setAdStatus({ ad_ids: ['w-1'], status: 'paused' });
    assert.deepEqual(outcomes(await explainEverywhere('w-1', 'p-2', Number(w.seq))), ['not_eligible/paused']);
    w = await writer(3).setAdStatus({ ad_ids: ['w-1'], status: 'active' });
    assert.deepEqual(outcomes(await explainEverywhere('w-1', 'p-2', Number(w.seq))), ['returned/']);

    w = await writer(4).reportSpend({ entries: [{ ad_id: 'w-1', spend_micros: 10_000 }] });
    assert.deepEqual(outcomes(await explainEverywhere('w-1', 'p-2', Number(w.seq))), ['not_eligible/over_budget']);

    await writer(5).upsertAds({ ads: [probeAd('w-pop', 'p-pop')] });
    w = await writer(6).recordEvents({ events: [{ ad_id: 'w-pop', type: 'CLICK' }] });
    for (const [i, c] of conns.entries()) {
      const res = await c.retrieval.retrieve({ attributes: attrs({ probe: ['p-pop'] }), num_results: 10 });
      assert.ok(Number(res.data_seq) >= Number(w.seq), `connection ${i} is behind`);
      assert.deepEqual(adIds(res), ['w-pop']);
      assert.ok(res.candidates[0].sources.includes('Popularity'), `connection ${i}: the recorded click is not in this worker's popularity`);
    }

    w = await writer(7).deleteAds({ ad_ids: ['w-1'] });
    assert.deepEqual(outcomes(await explainEverywhere('w-1', 'p-2', Number(w.seq))), ['unknown_ad/']);
    // An id freed by the delete is reused by the next insert: no worker may mix the two ads up.
    r = await writer(0).upsertAds({ ads: [probeAd('w-2', 'p-3')] });
    assert.deepEqual(outcomes(await explainEverywhere('w-2', 'p-3', Number(r.seq))), ['returned/']);
    assert.deepEqual(outcomes(await explainEverywhere('w-1', 'p-2', Number(r.seq))), ['unknown_ad/']);
  });

  it('when both workers write at once, then every write is served everywhere once all are answered', async () => {
    const writes = await Promise.all(
      Array.from({ length: 24 }, (_, i) => conns[i % CONNECTIONS].admin.upsertAds({ ads: [probeAd(`c-${i}`, 'p-concurrent', { bid_micros: 1_000_000 + i, category: `cat-${i}` })] })),
    );
    const top = Math.max(...writes.map((r) => Number(r.seq)));
    for (const [i, c] of conns.entries()) {
      const res = await c.retrieval.retrieve({ attributes: attrs({ probe: ['p-concurrent'] }), num_results: 100 });
      assert.ok(Number(res.data_seq) >= top, `connection ${i} is behind`);
      assert.equal(adIds(res).length, 24, `connection ${i} serves ${adIds(res).length} of 24 concurrent upserts`);
    }
  });

  it('when /metrics is read, then it is one endpoint summing the workers (data gauges not doubled)', async () => {
    const before = metricSum(await getText(cluster.metricsUrl), 'funnel_rpc_requests_total', { method: 'Retrieve', code: 'OK' });
    await Promise.all(conns.flatMap((c) => [c.retrieval.retrieve({ attributes: attrs({ probe: ['base-1'] }) }), c.retrieval.retrieve({ attributes: attrs({ probe: ['base-2'] }) })]));
    const text = await getText(cluster.metricsUrl);
    assert.equal(metricSum(text, 'funnel_rpc_requests_total', { method: 'Retrieve', code: 'OK' }) - before, 2 * CONNECTIONS);
    const ads = (await conns[0].admin.getAds({ ad_ids: Array.from({ length: 12 }, (_, n) => `ad-${n}`) })).ads.length;
    assert.equal(ads, 12);
    // 12 catalog ads + w-pop + w-2 + 24 concurrent ones.
    assert.equal(metricSum(text, 'funnel_index_size', { index: 'ads' }), 12 + 2 + 24);
  });

  it('when the config changes and SIGHUP is sent, then every worker serves the new version', async () => {
    fs.writeFileSync(configFile, config('second'));
    cluster.proc.kill('SIGHUP');
    await waitFor('every worker to reload', async () => {
      const text = await getText(cluster.metricsUrl);
      return metricSum(text, 'funnel_config_info', { version: 'second' }) === 1 && metricSum(text, 'funnel_config_info', { version: 'first' }) === 0;
    });
  });

  it('when a worker is killed with SIGKILL, then the service keeps answering, the worker is restarted, and it serves later writes', async () => {
    const [victim, survivor] = cluster.pids;
    process.kill(victim, 'SIGKILL');
    await waitFor('the victim to die', () => !alive(victim));
    // New connections go to the live worker: every call answers.
    const fresh = connections(cluster.address);
    try {
      for (const c of fresh) assert.deepEqual(adIds(await c.retrieval.retrieve({ attributes: attrs({ probe: ['base-3'] }) })), ['ad-3']);
    } finally {
      for (const c of fresh) {
        c.admin.close();
        c.retrieval.close();
      }
    }
    await waitFor('the restart', () => /worker died; restarting it/.test(cluster.stderr()) && (cluster.stderr().match(/"msg":"worker serving"/g) ?? []).length >= 3);
    assert.ok(alive(survivor), 'the other worker kept running');
    // The old connections reconnect (to either worker); a write reaches both again.
    const again = connections(cluster.address);
    try {
      const r = await again[0].admin.upsertAds({ ads: [probeAd('after-restart', 'p-restart')] });
      for (const [i, c] of again.entries()) {
        const res = await c.retrieval.retrieve({ attributes: attrs({ probe: ['p-restart'] }) });
        assert.ok(Number(res.data_seq) >= Number(r.seq), `connection ${i} is behind`);
        assert.deepEqual(adIds(res), ['after-restart']);
      }
    } finally {
      for (const c of again) {
        c.admin.close();
        c.retrieval.close();
      }
    }
  });

  it('when the primary is killed with SIGKILL, then no worker outlives it (nothing left holding the data directory)', async () => {
    const dir = path.join(tmp, 'orphans');
    fs.mkdirSync(dir);
    const dataDir = await ingestRows(dir, [row(1, DIM), row(2, DIM)]);
    const other = await serveWorkers(dataDir, tokenFile, await freePort());
    assert.ok(other.pids.every(alive));
    other.proc.kill('SIGKILL');
    assert.equal(await other.exited, 'SIGKILL');
    await waitFor('the workers to die with their primary', () => !other.pids.some(alive));
  });

  it('when the primary gets SIGTERM, then every worker drains and it exits 0', async () => {
    const pids = [...cluster.stderr().matchAll(/"worker_pid":(\d+),"port":\d+,"msg":"worker serving"/g)].map((m) => Number(m[1]));
    assert.ok(pids.length >= 2);
    cluster.proc.kill('SIGTERM');
    assert.equal(await cluster.exited, 0);
    for (const pid of pids) assert.ok(!alive(pid), `worker ${pid} outlived the primary`);
  });
});
