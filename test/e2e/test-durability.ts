/**
 * The command-line server as a child process: every acknowledged Admin write survives kill -9
 * (GetAds and Retrieve on a new process over the same directory), and SIGTERM drains in-flight
 * calls, reports NOT_SERVING to health watchers, and exits 0.
 */
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { HnswIndex } from '../../src/native/index';
import { row, tempDir } from '../fixtures/catalog';
import {
  ADMIN_TOKEN,
  adIds,
  adminClient,
  attrs,
  ingestRows,
  retrievalClient,
  rpcError,
  sleep,
  type AdMsg,
  type AdminClient,
  type RetrievalClient,
} from '../fixtures/e2e-server';

const CLI = path.resolve(__dirname, '..', '..', 'src', 'cli', 'main.js');
const DIM = 4;

/** A `funnel serve` child process and clients of it. */
interface Child {
  proc: ChildProcess;
  address: string;
  admin: AdminClient;
  retrieval: RetrievalClient;
  /** Resolves with the exit code (or the signal name) once the process is gone. */
  exited: Promise<number | string>;
  stderr(): string;
  close(): void;
}

const children = new Set<Child>();

/** Starts `funnel serve --data DIR --port 0 ...` and resolves once it printed its address. */
function serve(dataDir: string, tokenFile: string, extra: string[] = []): Promise<Child> {
  const proc = spawn(process.execPath, [CLI, 'serve', '--data', dataDir, '--port', '0', '--admin-token-file', tokenFile, ...extra], {
    env: { ...process.env, FUNNEL_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  const exited = new Promise<number | string>((resolve) => proc.once('exit', (code, signal) => resolve(code ?? signal ?? 'unknown')));
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise<Child>((resolve, reject) => {
    const onExit = (code: number | string) => reject(new Error(`funnel serve exited (${code}) before listening:\n${err}`));
    void exited.then(onExit);
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /funnel serving on (\S+):(\d+) /.exec(out);
      if (!m) return;
      proc.stdout!.removeAllListeners('data');
      proc.stdout!.resume();
      const address = `127.0.0.1:${m[2]}`;
      const admin = adminClient(address);
      const retrieval = retrievalClient(address);
      const child: Child = {
        proc,
        address,
        admin,
        retrieval,
        exited,
        stderr: () => err,
        close() {
          admin.close();
          retrieval.close();
          if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
          children.delete(child);
        },
      };
      children.add(child);
      resolve(child);
    });
  });
}

/** Stage timeouts and a deadline no busy machine reaches. */
const RELAXED =
  'limits: { default_deadline_ms: 60000, shed_event_loop_lag_ms: 0 }\n' +
  `pipelines: { default: { stages: { ${['Eligibility', 'Ann', 'Targeting', 'Popularity', 'Filters', 'EarlyRanker', 'Diversifier'].map((s) => `${s}: { timeout_ms: 30000 }`).join(', ')} } } }\n`;

function probeAd(adId: string, probe: string, extra: Partial<AdMsg> = {}): AdMsg {
  return {
    ad_id: adId,
    advertiser_id: `adv-${adId}`,
    campaign_id: 'camp-d',
    category: 'durable',
    bid_micros: 1_500_000,
    embedding: [0.1, 0.2, 0.3, 0.4],
    targeting: [{ attributes: { probe: { any_of: [probe] } } }],
    ...extra,
  };
}

// Once as a single process, once as a primary with two workers (kill -9 of the primary takes its workers down).
for (const workers of ['1', '2']) {
describe(`e2e: durability and shutdown of funnel serve --workers ${workers}`, function () {
  // Without --config, a config whose stages a busy test machine cannot time out (a degraded answer would hide what is tested).
  const serveWith = (dataDir: string, tokenFile: string, extra: string[] = []) =>
    serve(dataDir, tokenFile, ['--workers', workers, ...(extra.includes('--config') ? [] : ['--config', relaxedConfig()]), ...extra]);
  const relaxedConfig = (more = '') => {
    const file = path.join(tmp, `relaxed-${Math.random().toString(36).slice(2)}.yaml`);
    fs.writeFileSync(file, more + RELAXED);
    return file;
  };

  let tmp: string;
  let tokenFile: string;

  before(() => {
    tmp = tempDir('durability');
    tokenFile = path.join(tmp, 'token');
    fs.writeFileSync(tokenFile, `${ADMIN_TOKEN}\n`);
  });
  afterEach(() => {
    for (const c of [...children]) c.close();
  });
  after(() => {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('when the server is killed with SIGKILL after Admin writes, then a new server on the directory shows every acknowledged write', async () => {
    const dir = path.join(tmp, 'kill9');
    fs.mkdirSync(dir);
    const base = Array.from({ length: 10 }, (_, n) =>
      row(n, DIM, { targeting: [{ probe: { any_of: [`base-${n}`] } }], ...(n === 5 ? { status: 'paused' } : {}), ...(n === 6 ? { daily_budget_micros: 1000 } : {}) }),
    );
    const dataDir = await ingestRows(dir, base);
    const first = await serveWith(dataDir, tokenFile);
    const vec = [0.9, -0.1, 0.2, 0.3];
    await first.admin.upsertAds({ ads: [probeAd('dur-new', 'p-new', { embedding: vec, quality: 0.25, daily_budget_micros: 5_000_000 })] });
    await first.admin.upsertAds({ ads: [{ ...(probeAd('ad-3', 'p-moved') as AdMsg), advertiser_id: 'adv-3', category: 'moved' }] });
    await first.admin.setAdStatus({ ad_ids: ['ad-1'], status: 'paused' });
    await first.admin.setAdStatus({ ad_ids: ['ad-5'], status: 'active' });
    await first.admin.deleteAds({ ad_ids: ['ad-2'] });
    await first.admin.reportSpend({ entries: [{ ad_id: 'ad-6', spend_micros: 1000 }] });
    await first.admin.upsertAds({ ads: [probeAd('dur-pop', 'p-pop')] });
    await first.admin.recordEvents({ events: [{ ad_id: 'dur-pop', type: 'CLICK' }] });
    // A burst of writes, killed while some may still be in flight: every acknowledged one must survive.
    const acked: string[] = [];
    const burst = Array.from({ length: 40 }, (_, i) =>
      first.admin.upsertAds({ ads: [probeAd(`burst-${i}`, `p-burst-${i}`)] }).then(
        () => {
          acked.push(`burst-${i}`);
          if (acked.length === 25) first.proc.kill('SIGKILL');
        },
        () => undefined,
      ),
    );
    await Promise.all(burst);
    assert.equal(await first.exited, 'SIGKILL');
    first.close();
    assert.ok(acked.length >= 25);

    const second = await serveWith(dataDir, tokenFile);
    const get = async (ids: string[]) => (await second.admin.getAds({ ad_ids: ids })).ads;
    const find = async (probe: string, extra = {}) => second.retrieval.retrieve({ attributes: attrs({ probe: [probe] }), num_results: 100, ...extra });

    const [created] = await get(['dur-new']);
    assert.ok(created, 'the upserted ad is there');
    assert.equal(created.quality, 0.25);
    assert.equal(String(created.daily_budget_micros), '5000000');
    assert.deepEqual(
      created.embedding?.map((x) => Math.round(x * 1e6) / 1e6),
      vec,
    );
    const res = await find('p-new', { user_embedding: vec });
    assert.deepEqual(adIds(res), ['dur-new']);
    assert.ok(res.candidates[0].sources.includes('Ann'), 'the ANN index holds the ad written before the kill');

    assert.deepEqual(adIds(await find('p-moved')), ['ad-3']);
    assert.equal((await find('p-moved')).candidates[0].category, 'moved');
    assert.deepEqual(adIds(await find('base-3')), [], 'the old targeting of ad-3 is gone');
    assert.equal((await get(['ad-1']))[0].status, 'paused');
    assert.deepEqual(adIds(await find('base-1')), []);
    assert.deepEqual(adIds(await find('base-5')), ['ad-5'], 'activated ad is served');
    assert.deepEqual(await get(['ad-2']), []);
    assert.deepEqual(adIds(await find('base-2')), []);
    assert.deepEqual(adIds(await find('base-6')), [], 'spend at budget survives');
    const pop = await find('p-pop');
    assert.deepEqual(adIds(pop), ['dur-pop']);
    assert.ok(pop.candidates[0].sources.includes('Popularity'), 'recorded events survive');

    const survivors = (await get(acked)).map((a) => a.ad_id);
    assert.deepEqual([...survivors].sort(), [...acked].sort(), 'every acknowledged burst upsert survives');
    for (const id of acked) assert.deepEqual(adIds(await find(`p-${id}`)), [id], `${id} acknowledged but not served`);
    second.close();
  });

  it('when Admin writes pass checkpoint.changes, then the ANN index is checkpointed in the background, and after SIGKILL a new server replays only what came later, losing nothing acknowledged', async () => {
    const dir = path.join(tmp, 'checkpoint');
    fs.mkdirSync(dir);
    const dataDir = await ingestRows(dir, Array.from({ length: 10 }, (_, n) => row(n, DIM, { targeting: [{ probe: { any_of: ['base'] } }] })));
    const config = path.join(dir, 'config.yaml');
    fs.writeFileSync(config, 'checkpoint: { changes: 20, interval_s: 3600 }\n' + RELAXED);
    const annFile = path.join(dataDir, 'ann.fidx');
    const tagOf = () => HnswIndex.load(annFile, { mmap: true, verify: false }).tag;
    const before = tagOf();
    const first = await serveWith(dataDir, tokenFile, ['--config', config]);
    const acked: string[] = [];
    let lastSeq = 0;
    for (let i = 0; i < 30; i++) {
      const r = await first.admin.upsertAds({ ads: [probeAd(`ck-${i}`, `p-ck-${i}`)] });
      acked.push(`ck-${i}`);
      lastSeq = Number(r.seq);
    }
    // The 20th change started a checkpoint: wait (by polling the file, no timing) until it landed.
    let tag = tagOf();
    for (let tries = 0; tag === before && tries < 500; tries++) {
      await sleep(20);
      tag = tagOf();
    }
    assert.ok(tag > before && tag <= lastSeq, `the index file was checkpointed in the background (tag ${before} -> ${tag}, last seq ${lastSeq})`);
    first.proc.kill('SIGKILL');
    assert.equal(await first.exited, 'SIGKILL');
    first.close();
    const second = await serveWith(dataDir, tokenFile, ['--config', config]);
    const ads = (await second.admin.getAds({ ad_ids: acked })).ads.map((a) => a.ad_id);
    assert.deepEqual([...ads].sort(), [...acked].sort());
    for (const id of acked) {
      const res = await second.retrieval.retrieve({ attributes: attrs({ probe: [`p-${id}`] }), user_embedding: [0.1, 0.2, 0.3, 0.4], num_results: 5 });
      assert.deepEqual(adIds(res), [id]);
      assert.ok(res.candidates[0].sources.includes('Ann'), `${id} is in the ANN index after the restart`);
    }
    second.close();
  });

  it('when a server on an empty directory is killed with SIGKILL after its first upserts, then a new server serves them (Ann included)', async () => {
    const dir = path.join(tmp, 'empty');
    fs.mkdirSync(dir);
    const dataDir = await ingestRows(dir, []);
    const first = await serveWith(dataDir, tokenFile);
    await first.admin.upsertAds({ ads: [probeAd('e-1', 'p-e', { embedding: [1, 0, 0] }), probeAd('e-2', 'p-e', { embedding: [0, 1, 0] })] });
    await first.admin.setAdStatus({ ad_ids: ['e-2'], status: 'paused' });
    first.proc.kill('SIGKILL');
    assert.equal(await first.exited, 'SIGKILL');
    first.close();
    const second = await serveWith(dataDir, tokenFile);
    const res = await second.retrieval.retrieve({ attributes: attrs({ probe: ['p-e'] }), user_embedding: [0, 1, 0] });
    assert.deepEqual(adIds(res), ['e-1']);
    assert.ok(res.candidates[0].sources.includes('Ann'));
    assert.deepEqual(
      (await second.admin.getAds({ ad_ids: ['e-1', 'e-2'] })).ads.map((a) => [a.ad_id, a.status]),
      [
        ['e-1', 'active'],
        ['e-2', 'paused'],
      ],
    );
    second.close();
  });

  it('when SIGTERM arrives during a slow Retrieve, then health watchers see NOT_SERVING, the call completes OK, and the process exits 0', async () => {
    const dir = path.join(tmp, 'drain');
    fs.mkdirSync(dir);
    const dataDir = await ingestRows(
      dir,
      Array.from({ length: 10 }, (_, n) => row(n, DIM)),
    );
    const config = path.join(dir, 'funnel.yaml');
    fs.writeFileSync(
      config,
      ['version: drain-test', 'pipelines:', '  default:', '    stages:', '      Targeting:', '        timeout_ms: 10000', '        fault:', '          delay_ms: 1500', ''].join('\n'),
    );
    const child = await serveWith(dataDir, tokenFile, ['--config', config, '--drain-timeout-ms', '60000']);

    const client = new grpc.Client(child.address, grpc.credentials.createInsecure());
    const watchDef = healthService.Watch as grpc.MethodDefinition<{ service: string }, { status?: string }>;
    const statuses: string[] = [];
    const watch = client.makeServerStreamRequest(watchDef.path, watchDef.requestSerialize, watchDef.responseDeserialize, { service: 'funnel.v1.Retrieval' }, new grpc.Metadata(), {});
    watch.on('error', () => undefined);
    const waiters: (() => void)[] = [];
    watch.on('data', (m: { status?: string }) => {
      statuses.push(m.status ?? '');
      for (const w of waiters.splice(0)) w();
    });
    const seen = (status: string) =>
      new Promise<void>((resolve) => {
        const check = () => (statuses.includes(status) ? resolve() : waiters.push(check));
        check();
      });
    await seen('SERVING');

    const events: string[] = [];
    const slow = child.retrieval.retrieve({ num_results: 5 }, { deadlineMs: 30_000 }).then((r) => {
      events.push('retrieve answered');
      return r;
    });
    // Give the call time to reach the server (the stage then holds it for 1.5 s).
    await new Promise((r) => setTimeout(r, 400));
    child.proc.kill('SIGTERM');
    await seen('NOT_SERVING');
    events.push('NOT_SERVING');
    // A health watch is an in-flight call too: a watcher that saw NOT_SERVING goes away.
    watch.cancel();
    client.close();

    const res = await slow;
    assert.equal(res.candidates.length, 5);
    assert.ok(!res.degraded, `degraded: ${res.degraded_stages.join(',')}`);
    assert.deepEqual(events, ['NOT_SERVING', 'retrieve answered'], 'NOT_SERVING is reported while the call is still in flight');
    const fresh = retrievalClient(child.address);
    try {
      const err = await rpcError(fresh.retrieve({}, { deadlineMs: 10_000 }));
      assert.equal(err.code, grpc.status.UNAVAILABLE);
    } finally {
      fresh.close();
    }
    assert.equal(await child.exited, 0, child.stderr());
    child.close();
  });

  it('when SIGTERM arrives while a client keeps a health Watch open, then the drain ends the watch instead of waiting out the drain timeout', async () => {
    const dir = path.join(tmp, 'watch');
    fs.mkdirSync(dir);
    const dataDir = await ingestRows(dir, [row(1, DIM), row(2, DIM)]);
    // Clients with gRPC client-side health checking hold exactly such a Watch for their channel's life.
    const child = await serveWith(dataDir, tokenFile, ['--drain-timeout-ms', '8000']);
    const client = new grpc.Client(child.address, grpc.credentials.createInsecure());
    const watchDef = healthService.Watch as grpc.MethodDefinition<{ service: string }, { status?: string }>;
    const watch = client.makeServerStreamRequest(watchDef.path, watchDef.requestSerialize, watchDef.responseDeserialize, { service: '' }, new grpc.Metadata(), {});
    watch.on('error', () => undefined);
    const statuses: string[] = [];
    const ended = new Promise<void>((resolve) => watch.on('status', () => resolve()));
    await new Promise<void>((resolve) =>
      watch.on('data', (m: { status?: string }) => {
        statuses.push(m.status ?? '');
        if (m.status === 'SERVING') resolve();
      }),
    );
    child.proc.kill('SIGTERM');
    const code = await child.exited;
    await ended;
    client.close();
    assert.equal(code, 0);
    assert.ok(statuses.includes('NOT_SERVING'), `watch saw ${statuses.join(',')}`);
    assert.doesNotMatch(child.stderr(), /drain timeout/, 'nothing was in flight but the watch, yet the drain waited for its timeout and then force-cancelled');
    child.close();
  });
});
}
