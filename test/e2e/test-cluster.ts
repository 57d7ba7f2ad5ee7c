/**
 * A sharded cluster end to end, every part a real process on loopback: nats-server with
 * JetStream, 2 shards x 2 replicas (`funnel serve --nats --shard I/2`, each filling an empty
 * data directory from the stream), `funnel root` in front, and the catalog published by
 * `funnel ingest --nats --shards 2`. Checked through the root with real gRPC clients: the
 * eligibility invariant, read-your-writes through the consistency token for every Admin call,
 * Explain, a malformed stream message parked, kill -9 of a replica under mixed reads and writes
 * (nothing acknowledged lost, no degraded answer), its restart catching up, a shard with no
 * replica degrading the answer by name, and NATS going down and coming back.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { connect } from '@nats-io/transport-node';
import * as http from 'node:http';
import { encodeMessage } from '../../src/cluster/messages';
import { shardOf } from '../../src/cluster/shard';
import { parseCatalogObject, type CatalogRow } from '../../src/store/catalog-schema';
import { row, tempDir, writeCatalog } from '../fixtures/catalog';
import {
  freePort,
  ingestNats,
  needNats,
  NatsServer,
  startReplica,
  startRoot,
  waitFor,
  writeTestConfig,
  type FunnelProcess,
} from '../fixtures/cluster';
import {
  ADMIN_TOKEN,
  adIds,
  adminClient,
  adminMetadata,
  attrs,
  healthClient,
  retrievalClient,
  rpcError,
  sleep,
  type AdminClient,
  type AdMsg,
  type RetrievalClient,
  type RetrieveRequestMsg,
} from '../fixtures/e2e-server';
import { invariantViolations, type OracleRow, type ReportedSpend } from '../fixtures/eligibility-oracle';
import { rng } from '../fixtures/vectors';

const DIM = 4;
const ADS = 400;
const SHARDS = 2;
const COUNTRIES = ['US', 'CA', 'DE'];
const PLATFORMS = ['ios', 'android', 'web'];

/** A catalog with targeting, paused ads, ended flights and budgets. */
function catalogRows(): Record<string, unknown>[] {
  const r = rng(11);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(r() * xs.length)];
  return Array.from({ length: ADS }, (_, n) => {
    const extra: Record<string, unknown> = { advertiser_id: `adv-${n % 23}`, bid_micros: 1000 + Math.floor(r() * 1_000_000), quality: Math.round(r() * 100) / 100 };
    if (r() < 0.6) extra.targeting = [{ country: { any_of: [pick(COUNTRIES)] } }, ...(r() < 0.5 ? [{ platform: { any_of: [pick(PLATFORMS)] }, country: { none_of: [pick(COUNTRIES)] } }] : [])];
    if (r() < 0.1) extra.status = 'paused';
    if (r() < 0.05) extra.end_time = new Date(Date.now() - 3_600_000).toISOString();
    if (r() < 0.2) extra.daily_budget_micros = 5_000 + Math.floor(r() * 10_000);
    return row(n, DIM, extra);
  });
}

/**
 * A new ad of its own advertiser: ads left behind by one test (untargeted, so eligible for any
 * request) then never take another test's ads' places under the advertiser cap.
 */
function adMsg(id: string, extra: Partial<AdMsg> = {}): AdMsg {
  const r = row(0, DIM);
  return {
    ad_id: id,
    advertiser_id: `adv-${id}`,
    campaign_id: 'camp-new',
    category: 'news',
    bid_micros: '900000000',
    quality: 1,
    embedding: r.embedding as number[],
    ...extra,
  } as AdMsg;
}

/** Targeting on the attribute `campaign` (proto form: conjunctions of attribute predicates). */
function campaignTargeting(value: string): AdMsg['targeting'] {
  return [{ attributes: { campaign: { any_of: [value] } } }];
}

/** Ids whose shard is `shard`, with a prefix. */
function idsOfShard(prefix: string, shard: number, n: number): string[] {
  const out: string[] = [];
  for (let i = 0; out.length < n; i++) if (shardOf(`${prefix}-${i}`, SHARDS) === shard) out.push(`${prefix}-${i}`);
  return out;
}

describe('cluster: 2 shards x 2 replicas behind funnel root, writes through NATS JetStream', function () {
  this.timeout(600_000);
  let dir: string;
  let nats: NatsServer;
  let tokenFile: string;
  let config: string;
  let rootConfig: string;
  let replicas: FunnelProcess[][] = [];
  let root: FunnelProcess;
  let rootAdmin: AdminClient;
  let rootRetrieval: RetrievalClient;
  const rows = new Map<string, OracleRow>();
  const spends = new Map<string, ReportedSpend>();
  let ingestOut = '';

  const dataDir = (shard: number, k: number) => path.join(dir, `data-${shard}-${k}`);
  const replicaAddr = (shard: number, k: number) => replicas[shard][k].addr;

  before(async function () {
    const bin = needNats(this);
    dir = tempDir('cluster');
    tokenFile = path.join(dir, 'token');
    fs.writeFileSync(tokenFile, ADMIN_TOKEN + '\n');
    config = writeTestConfig(dir, 'replica.yaml');
    rootConfig = writeTestConfig(dir, 'root.yaml', 'root: { hedge_after_ms: 100, down_after_failures: 1, retry_down_after_ms: 500 }\n');
    nats = await NatsServer.start(bin, path.join(dir, 'nats'));
    const catalog = catalogRows();
    for (const r of catalog) rows.set(r.ad_id as string, r as unknown as OracleRow);
    const file = writeCatalog(dir, 'catalog.jsonl', catalog);
    const ing = await ingestNats(file, nats.url, SHARDS);
    assert.equal(ing.code, 0, ing.stderr);
    ingestOut = ing.stdout;
    // Every replica starts on an empty directory and fills it from the stream.
    for (let s = 0; s < SHARDS; s++) {
      replicas.push(await Promise.all([0, 1].map((k) => startReplica({ nats: nats.url, shard: `${s}/${SHARDS}`, data: dataDir(s, k), tokenFile, config }))));
    }
    root = await startRoot({ shards: replicas.map((g) => g.map((r) => r.addr)), tokenFile, config: rootConfig, nats: nats.url });
    rootAdmin = adminClient(root.addr);
    rootRetrieval = retrievalClient(root.addr);
  });

  after(async () => {
    rootAdmin?.close();
    rootRetrieval?.close();
    await root?.kill('SIGKILL');
    for (const g of replicas) for (const r of g) await r.kill('SIGKILL');
    await nats?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('when the catalog is published with ingest --nats, then each replica fills its empty directory with exactly its shard\'s part', async () => {
    assert.match(ingestOut, new RegExp(`published ${ADS} rows .* for 2 shards`));
    const ids = [...rows.keys()];
    for (let s = 0; s < SHARDS; s++) {
      for (let k = 0; k < 2; k++) {
        const admin = adminClient(replicaAddr(s, k));
        try {
          const got = new Set((await admin.getAds({ ad_ids: ids })).ads.map((a) => a.ad_id));
          const want = ids.filter((id) => shardOf(id, SHARDS) === s);
          assert.equal(got.size, want.length, `replica ${s}/${k} holds ${got.size} ads, its shard has ${want.length}`);
          for (const id of want) assert.ok(got.has(id), `${id} missing on replica ${s}/${k}`);
        } finally {
          admin.close();
        }
      }
    }
    // And the root's GetAds routes each id to its shard.
    const all = await rootAdmin.getAds({ ad_ids: ids });
    assert.equal(all.ads.length, ADS);
  });

  it('when random requests go through the root, then every answer keeps the eligibility invariant, merged from both shards, never degraded', async () => {
    const r = rng(5);
    let fromShard = [0, 0];
    for (let i = 0; i < 40; i++) {
      const req: RetrieveRequestMsg = {
        request_id: `inv-${i}`,
        attributes: attrs({ country: [COUNTRIES[i % 3]], platform: [PLATFORMS[Math.floor(r() * 3)]] }),
        user_embedding: i % 2 === 0 ? (row(i, DIM).embedding as number[]) : [],
        num_results: 5 + (i % 30),
        exclude_advertiser_ids: i % 5 === 0 ? ['adv-1', 'adv-2'] : [],
        blocked_categories: i % 7 === 0 ? ['finance'] : [],
      };
      const res = await rootRetrieval.retrieve(req);
      assert.deepEqual(invariantViolations(res, req, rows, spends, req.num_results!), []);
      assert.equal(res.degraded ?? false, false, `degraded: ${res.degraded_stages}`);
      for (const id of adIds(res)) fromShard[shardOf(id, SHARDS)]++;
      // Best first across shards.
      for (let j = 1; j < res.candidates.length; j++) assert.ok((res.candidates[j - 1].score ?? 0) >= (res.candidates[j].score ?? 0));
    }
    assert.ok(fromShard[0] > 0 && fromShard[1] > 0, `answers drew on both shards: ${fromShard}`);
    fromShard = [0, 0];
  });

  it('when funnel eval runs through the root against a full copy of the catalog, then it reports recall and explains every loss by stage', async () => {
    const full = path.join(dir, 'full');
    const { spawnSync } = await import('node:child_process');
    const CLI = path.resolve(__dirname, '..', '..', 'src', 'cli', 'main.js');
    const ing = spawnSync(process.execPath, [CLI, 'ingest', '--catalog', path.join(dir, 'catalog.jsonl'), '--data', full], { encoding: 'utf8' });
    assert.equal(ing.status, 0, ing.stderr);
    const reqs = Array.from({ length: 12 }, (_, i) =>
      JSON.stringify({ requestId: `ev-${i}`, attributes: { country: { values: [COUNTRIES[i % 3]] } }, userEmbedding: row(i, DIM).embedding, numResults: 10 }),
    );
    const file = path.join(dir, 'requests.jsonl');
    fs.writeFileSync(file, reqs.join('\n') + '\n');
    const r = spawnSync(process.execPath, [CLI, 'eval', '--root', root.addr, '--data', full, '--requests', file, '--config', config, '--admin-token-file', tokenFile, '--json'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const line = JSON.parse(r.stdout.trim().split('\n')[0]) as { via: string; requests: number; recall_at_n: number; ecpm_share: number; loss: Record<string, Record<string, number>>; config: string };
    assert.equal(line.via, 'root');
    assert.equal(line.requests, 12);
    assert.equal(line.config, `root ${root.addr}`);
    assert.ok(line.recall_at_n > 0 && line.recall_at_n <= 1, `recall ${line.recall_at_n}`);
    assert.ok(!('unexplained' in line.loss), JSON.stringify(line.loss));
    // Without the token the losses are counted, not explained.
    const r2 = spawnSync(process.execPath, [CLI, 'eval', '--root', root.addr, '--data', full, '--requests', file, '--config', config, '--json'], { encoding: 'utf8' });
    assert.equal(r2.status, 0, r2.stderr);
    const l2 = JSON.parse(r2.stdout.trim()) as { recall_at_n: number; loss: Record<string, Record<string, number>> };
    assert.equal(l2.recall_at_n, line.recall_at_n);
    if (line.recall_at_n < 1) assert.ok(l2.loss.unexplained.no_admin_token > 0);
  });

  it('when every Admin call goes through the root, then a Retrieve with its seq as min_seq sees its effect through the root', async () => {
    const id = idsOfShard('ryw', 1, 1)[0];
    const req: RetrieveRequestMsg = { attributes: attrs({ campaign: ['ryw-only'] }), num_results: 10 };
    const target = campaignTargeting('ryw-only');
    const up = await rootAdmin.upsertAds({ ads: [adMsg(id, { targeting: target, daily_budget_micros: '1000' })] });
    assert.equal(up.inserted, 1);
    // Ads without targeting match every request: look for the written ones only.
    const see = async (seq: string | undefined) => adIds(await rootRetrieval.retrieve({ ...req, num_results: 500, min_seq: seq })).filter((x) => x.startsWith('ryw'));
    assert.deepEqual(await see(up.seq), [id]);

    const paused = await rootAdmin.setAdStatus({ ad_ids: [id], status: 'paused' });
    assert.equal(paused.updated, 1);
    assert.ok(BigInt(paused.seq ?? 0) > BigInt(up.seq ?? 0));
    assert.deepEqual(await see(paused.seq), []);
    const active = await rootAdmin.setAdStatus({ ad_ids: [id, 'no-such-ad'], status: 'active' });
    assert.deepEqual(active.unknown_ad_ids, ['no-such-ad']);
    assert.deepEqual(await see(active.seq), [id]);

    const spent = await rootAdmin.reportSpend({ entries: [{ ad_id: id, spend_micros: '5000' }] });
    assert.equal(spent.applied, 1);
    assert.deepEqual(await see(spent.seq), [], 'over budget after ReportSpend');
    const reset = await rootAdmin.reportSpend({ entries: [{ ad_id: id, spend_micros: '0' }] });
    assert.deepEqual(await see(reset.seq), [id]);

    const ev = await rootAdmin.recordEvents({ events: [{ ad_id: id, type: 'CLICK', timestamp_ms: String(Date.now()), attributes: attrs({ country: ['US'] }) }] });
    assert.equal(ev.applied, 1);
    assert.ok(BigInt(ev.seq ?? 0) > BigInt(reset.seq ?? 0));

    // A write touching both shards: split by the root, the larger seq covers both parts.
    const both = [idsOfShard('ryw2', 0, 1)[0], idsOfShard('ryw2', 1, 1)[0]];
    const two = await rootAdmin.upsertAds({ ads: both.map((b) => adMsg(b, { targeting: target })) });
    assert.equal(two.inserted, 2);
    assert.deepEqual((await see(two.seq)).sort(), [...both, id].sort());
    const got = await rootAdmin.getAds({ ad_ids: [...both, id] });
    assert.equal(got.ads.length, 3);

    const del = await rootAdmin.deleteAds({ ad_ids: [...both, id] });
    assert.equal(del.deleted, 3);
    assert.deepEqual(await see(del.seq), []);
    // Every replica applies the shard's writes: both replicas of shard 1 agree once they reach the token.
    for (let k = 0; k < 2; k++) {
      const rc = retrievalClient(replicaAddr(1, k));
      try {
        assert.deepEqual(adIds(await rc.retrieve({ ...req, num_results: 500, min_seq: del.seq })).filter((x) => x.startsWith('ryw')), []);
      } finally {
        rc.close();
      }
    }
  });

  it('when an Admin call is made on a replica, then that replica serves it at once without a token, and refuses an ad of another shard naming the field', async () => {
    const admin = adminClient(replicaAddr(0, 1));
    const rc = retrievalClient(replicaAddr(0, 1));
    try {
      const id = idsOfShard('local', 0, 1)[0];
      await admin.upsertAds({ ads: [adMsg(id, { targeting: campaignTargeting('local-only') })] });
      assert.ok(adIds(await rc.retrieve({ attributes: attrs({ campaign: ['local-only'] }), num_results: 500 })).includes(id));
      const other = idsOfShard('local', 1, 1)[0];
      const err = await rpcError(admin.upsertAds({ ads: [adMsg(id), adMsg(other)] }));
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
      assert.match(err.details, /^ads\[1\]\.ad_id: ad local-\d+ belongs to shard 1 of 2/);
      // The root (with --nats) never saw that write, yet its GetAds, whichever replica of the
      // shard serves it (they take turns), sees it: it asks for the shard's last write in the stream.
      for (let i = 0; i < 4; i++) assert.equal((await rootAdmin.getAds({ ad_ids: [id] })).ads.length, 1, `GetAds ${i} through the root`);
      await admin.deleteAds({ ad_ids: [id] });
    } finally {
      admin.close();
      rc.close();
    }
  });

  it('when a write is invalid, then the root answers INVALID_ARGUMENT naming the field at its place in the caller\'s request', async () => {
    const ok0 = idsOfShard('bad', 0, 2);
    const ok1 = idsOfShard('bad', 1, 1)[0];
    // ads[2] is the second ad of shard 0's part: the shard names ads[1], the root maps it back.
    const err = await rpcError(rootAdmin.upsertAds({ ads: [adMsg(ok0[0]), adMsg(ok1), adMsg(ok0[1], { category: '' })] }));
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.match(err.details, /^ads\[2\]\.category/);
    // Refused whole by the root: no shard applied its part.
    assert.deepEqual((await rootAdmin.getAds({ ad_ids: [...ok0, ok1] })).ads, []);
    // What only the shard knows (the catalog's dimension) is still named at its place in the call.
    const dim = await rpcError(rootAdmin.upsertAds({ ads: [adMsg(ok1, { embedding: [1, 2] }), adMsg(ok0[0], { embedding: [1, 2] })] }));
    assert.equal(dim.code, grpc.status.INVALID_ARGUMENT);
    assert.match(dim.details, /^ads\[[01]\]\.embedding: has 2 values, the catalog's dimension is/);
    const unauth = await rpcError(adminClient(root.addr, 'wrong-token-0123456789').setAdStatus({ ad_ids: ['ad-1'], status: 'paused' }));
    assert.equal(unauth.code, grpc.status.UNAUTHENTICATED);
  });

  it('when Explain goes through the root, then a returned ad carries its place in the merged answer and an ad the merge cut is dropped at Root', async () => {
    const req: RetrieveRequestMsg = { request_id: 'explain', attributes: attrs({ country: ['US'], platform: ['ios'] }), num_results: 3 };
    const top = adIds(await rootRetrieval.retrieve(req));
    assert.equal(top.length, 3);
    // Each shard sends 6 (num_results x root.overfetch): of the next best ads, some were cut by the merge.
    const next = adIds(await rootRetrieval.retrieve({ ...req, num_results: 50 })).filter((id) => !top.includes(id)).slice(0, 12);
    const asked = [top[0], top[2], ...next, 'no-such-ad'];
    const ex = await rootRetrieval.explain({ request: req, ad_ids: asked }, { metadata: adminMetadata() });
    const by = new Map(ex.ads.map((a) => [a.ad_id, a]));
    assert.deepEqual(adIds(ex.response as never), top);
    assert.equal(by.get(top[0])!.outcome, 'returned');
    assert.equal(by.get(top[0])!.position, 1);
    assert.equal(by.get(top[2])!.position, 3);
    const atRoot = next.map((id) => by.get(id)!).filter((a) => a.stage === 'Root');
    assert.ok(atRoot.length > 0, `no asked ad was cut at Root: ${JSON.stringify(ex.ads)}`);
    for (const a of atRoot) {
      assert.equal(a.outcome, 'dropped');
      assert.match(a.reason!, /^(below_cutoff|advertiser_cap|category_cap)$/);
      assert.ok((a.detail ?? '').length > 0);
    }
    for (const id of next) assert.equal(by.get(id)!.outcome, 'dropped', JSON.stringify(by.get(id)));
    assert.equal(by.get('no-such-ad')!.outcome, 'unknown_ad');
    const noAuth = await rpcError(rootRetrieval.explain({ request: req, ad_ids: [top[0]] }));
    assert.equal(noAuth.code, grpc.status.UNAUTHENTICATED);
  });

  it('when a malformed message lands on a shard\'s subject, then every replica parks it, logs it and goes on applying later writes', async () => {
    const nc = await connect({ servers: nats.url });
    try {
      const subject = 'funnel.writes.2.1';
      await nc.request(subject, new TextEncoder().encode('{"v":1,"kind":"upsert","ads":[{"ad_id":"x"}]}'), { timeout: 5000 }).catch(() => undefined);
      // (a plain publish to a JetStream subject is stored; request() only waits for the PubAck)
      await nc.request(subject, new TextEncoder().encode('not json at all'), { timeout: 5000 }).catch(() => undefined);
    } finally {
      await nc.close();
    }
    const id = idsOfShard('after-parked', 1, 1)[0];
    const up = await rootAdmin.upsertAds({ ads: [adMsg(id)] });
    assert.equal(up.inserted, 1);
    try {
      for (const r of replicas[1]) {
        await waitFor('the parked messages in the replica log', () => (r.stderr().match(/malformed stream message parked/g) ?? []).length >= 2, 20_000);
        assert.match(r.stderr(), /"reason":"row"/);
        assert.match(r.stderr(), /"reason":"json"/);
        // The write after them is applied on this replica too: GetAds with its token.
        const admin = adminClient(r.addr);
        try {
          assert.equal((await admin.getAds({ ad_ids: [id], min_seq: up.seq! }, { deadlineMs: 20_000 })).ads.length, 1);
        } finally {
          admin.close();
        }
      }
      // Through the root without a token: it asks for every write it acknowledged itself.
      assert.equal((await rootAdmin.getAds({ ad_ids: [id] })).ads.length, 1);
    } finally {
      await rootAdmin.deleteAds({ ad_ids: [id] });
    }
  });

  it('when a replica is killed with SIGKILL under mixed reads and writes, then no acknowledged write is lost, answers keep coming without degraded, and its restart catches up', async () => {
    const acked: { id: string; seq?: string }[] = [];
    const failures: string[] = [];
    let degraded = 0;
    let answers = 0;
    let stop = false;
    const ids = idsOfShard('chaos', 0, 400);
    const writer = (async () => {
      let i = 0;
      while (!stop && i < ids.length) {
        const id = ids[i++];
        try {
          const r = await rootAdmin.upsertAds({ ads: [adMsg(id)] }, { deadlineMs: 20_000 });
          acked.push({ id, seq: r.seq });
        } catch (err) {
          failures.push(`write ${id}: ${(err as grpc.ServiceError).details}`);
        }
        await sleep(10);
      }
    })();
    const reader = (async () => {
      let i = 0;
      while (!stop) {
        try {
          const res = await rootRetrieval.retrieve({ attributes: attrs({ country: [COUNTRIES[i++ % 3]] }), num_results: 20 }, { deadlineMs: 10_000 });
          answers++;
          if (res.degraded) degraded++;
        } catch (err) {
          failures.push(`read: ${(err as grpc.ServiceError).details}`);
        }
      }
    })();
    await sleep(1500);
    const victim = replicas[0][0];
    await victim.kill('SIGKILL');
    await sleep(3000);
    stop = true;
    await Promise.all([writer, reader]);
    assert.ok(acked.length > 20, `only ${acked.length} writes acknowledged`);
    assert.ok(answers > 50, `only ${answers} answers`);
    assert.deepEqual(failures, []);
    assert.equal(degraded, 0);
    // Every acknowledged write is on the surviving replica (once it reaches the last token).
    const survivor = adminClient(replicaAddr(0, 1));
    const lastSeq = String(Math.max(...acked.map((a) => Number(a.seq ?? 0))));
    try {
      const got = new Set((await survivor.getAds({ ad_ids: acked.map((a) => a.id), min_seq: lastSeq }, { deadlineMs: 20_000 })).ads.map((a) => a.ad_id));
      assert.deepEqual(acked.filter((a) => !got.has(a.id)), []);
    } finally {
      survivor.close();
    }
    // The killed replica restarts on its directory, catches up from the stream, and has them all too.
    replicas[0][0] = await startReplica({ nats: nats.url, shard: `0/${SHARDS}`, data: dataDir(0, 0), tokenFile, config, port: Number(victim.addr.split(':')[1]) });
    const back = adminClient(replicas[0][0].addr);
    try {
      const got = new Set((await back.getAds({ ad_ids: acked.map((a) => a.id) })).ads.map((a) => a.ad_id));
      assert.deepEqual(acked.filter((a) => !got.has(a.id)), []);
      await rootAdmin.deleteAds({ ad_ids: acked.map((a) => a.id) });
    } finally {
      back.close();
    }
  });

  it('when both replicas of a shard are down, then answers through the root are degraded naming shard-1 and hold shard 0\'s ads; back up, they are whole again', async () => {
    const ports = replicas[1].map((r) => Number(r.addr.split(':')[1]));
    await Promise.all(replicas[1].map((r) => r.kill('SIGKILL')));
    const req: RetrieveRequestMsg = { attributes: attrs({ country: ['US'] }), num_results: 30 };
    const res = await rootRetrieval.retrieve(req, { deadlineMs: 5000 });
    assert.equal(res.degraded, true);
    assert.ok(res.degraded_stages.includes('shard-1'), `degraded_stages ${res.degraded_stages}`);
    assert.ok(!res.degraded_stages.includes('shard-0'));
    assert.ok(res.candidates.length > 0);
    for (const id of adIds(res)) assert.equal(shardOf(id, SHARDS), 0);
    assert.deepEqual(invariantViolations(res, req, rows, spends, 30), []);
    // A write for the dead shard fails UNAVAILABLE naming it; the root keeps serving.
    const err = await rpcError(rootAdmin.setAdStatus({ ad_ids: idsOfShard('down', 1, 1), status: 'paused' }, { deadlineMs: 5000 }));
    assert.equal(err.code, grpc.status.UNAVAILABLE);
    assert.match(err.details, /shard-1/);
    const health = healthClient(root.addr);
    try {
      assert.equal(await health.check('funnel.v1.Retrieval'), 'SERVING');
    } finally {
      health.close();
    }
    replicas[1] = await Promise.all([0, 1].map((k) => startReplica({ nats: nats.url, shard: `1/${SHARDS}`, data: dataDir(1, k), tokenFile, config, port: ports[k] })));
    await waitFor(
      'whole answers again',
      async () => {
        const r = await rootRetrieval.retrieve(req, { deadlineMs: 5000 });
        return !r.degraded && adIds(r).some((id) => shardOf(id, SHARDS) === 1);
      },
      30_000,
      200,
    );
  });

  it('when NATS is down, then Admin answers UNAVAILABLE and Retrieve keeps serving; when it is back, writes resume with nothing acknowledged lost', async () => {
    const before = idsOfShard('nats-before', 0, 1)[0];
    const b = await rootAdmin.upsertAds({ ads: [adMsg(before, { targeting: campaignTargeting('nats-drill') })] });
    // Every replica learns within a second that its shard has nothing up to that token.
    await sleep(1500);
    await nats.stop('SIGKILL');
    const err = await rpcError(rootAdmin.upsertAds({ ads: [adMsg(idsOfShard('nats-down', 0, 1)[0])] }, { deadlineMs: 15_000 }));
    assert.equal(err.code, grpc.status.UNAVAILABLE, err.details);
    for (let i = 0; i < 10; i++) {
      const res = await rootRetrieval.retrieve({ attributes: attrs({ campaign: ['nats-drill'] }), num_results: 500, min_seq: b.seq });
      assert.deepEqual(adIds(res).filter((x) => x.startsWith('nats-')), [before]);
      assert.equal(res.degraded ?? false, false);
    }
    // Replicas stay SERVING while NATS is away (they serve what they applied).
    const h = healthClient(replicaAddr(0, 1));
    try {
      assert.equal(await h.check('funnel.v1.Retrieval'), 'SERVING');
    } finally {
      h.close();
    }
    await nats.restart();
    const after = idsOfShard('nats-after', 0, 1)[0];
    let a: { seq?: string } | undefined;
    await waitFor(
      'Admin writes to resume',
      async () => {
        try {
          a = await rootAdmin.upsertAds({ ads: [adMsg(after, { targeting: campaignTargeting('nats-drill') })] }, { deadlineMs: 10_000 });
          return true;
        } catch {
          return false;
        }
      },
      60_000,
      250,
    );
    const res = await rootRetrieval.retrieve({ attributes: attrs({ campaign: ['nats-drill'] }), num_results: 500, min_seq: a!.seq });
    assert.deepEqual(adIds(res).filter((x) => x.startsWith('nats-')).sort(), [after, before].sort());
    await rootAdmin.deleteAds({ ad_ids: [before, after] });
  });

  it('when a replica falls behind the stream, then its lag shows in /metrics and health says NOT_SERVING until it has caught up', async () => {
    const lagConfig = writeTestConfig(dir, 'lag.yaml', 'cluster: { max_lag_messages: 50, max_lag_seconds: 1 }\n');
    const metricsPort = await freePort();
    const extra = await startReplica({ nats: nats.url, shard: `0/${SHARDS}`, data: path.join(dir, 'data-lag'), tokenFile, config: lagConfig, metricsPort });
    replicas.push([extra]);
    const health = healthClient(extra.addr);
    const metric = async (name: string): Promise<number> => {
      const text = await new Promise<string>((resolve, reject) =>
        http.get(`http://127.0.0.1:${metricsPort}/metrics`, (res) => {
          let b = '';
          res.on('data', (d: Buffer) => (b += d.toString()));
          res.on('end', () => resolve(b));
        }).once('error', reject),
      );
      const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
      return m ? Number(m[1]) : NaN;
    };
    try {
      assert.equal(await health.check('funnel.v1.Retrieval'), 'SERVING');
      assert.equal(await metric('funnel_replication_lag_messages'), 0);
      assert.equal(await metric('funnel_replication_connected'), 1);
      // Frozen, it misses 3,000 writes of its shard published straight to the stream.
      process.kill(extra.pid, 'SIGSTOP');
      const nc = await connect({ servers: nats.url });
      const ids = idsOfShard('lag', 0, 3000);
      try {
        const base = parseCatalogObject(row(0, DIM));
        if ('issues' in base) throw new Error('bad row');
        const pubs: Promise<unknown>[] = [];
        for (const id of ids) {
          const r: CatalogRow = { ...base.row, ad_id: id };
          pubs.push(nc.request(`funnel.writes.${SHARDS}.0`, encodeMessage({ kind: 'upsert', ads: [r] }), { timeout: 20_000 }));
        }
        await Promise.all(pubs);
      } finally {
        await nc.close();
      }
      await sleep(1500);
      process.kill(extra.pid, 'SIGCONT');
      let sawNotServing = false;
      let maxLag = 0;
      await waitFor(
        'the replica to catch up',
        async () => {
          const st = await health.check('funnel.v1.Retrieval').catch(() => 'ERROR');
          if (st === 'NOT_SERVING') sawNotServing = true;
          const lag = await metric('funnel_replication_lag_messages').catch(() => 0);
          if (lag > maxLag) maxLag = lag;
          const applied = await metric('funnel_replication_applied_seq').catch(() => 0);
          return st === 'SERVING' && sawNotServing && lag === 0 && applied > 0 && (await adminClient(extra.addr).getAds({ ad_ids: [ids[ids.length - 1]] })).ads.length === 1;
        },
        120_000,
        20,
      );
      assert.ok(sawNotServing, 'health never said NOT_SERVING while 3,000 writes behind');
      assert.ok(maxLag > 50, `largest lag seen ${maxLag}`);
      await rootAdmin.deleteAds({ ad_ids: ids });
    } finally {
      health.close();
      await extra.kill('SIGKILL');
    }
  });

  it('when a replica has uploaded a snapshot of its shard, then a new replica on an empty directory restores it and applies only the stream after it', async () => {
    const snapConfig = writeTestConfig(dir, 'snap.yaml', 'cluster: { snapshot: { interval_s: 1, min_messages: 1 } }\n');
    const before = idsOfShard('snap', 1, 3);
    await rootAdmin.upsertAds({ ads: before.map((id) => adMsg(id)) });
    const taker = await startReplica({ nats: nats.url, shard: `1/${SHARDS}`, data: path.join(dir, 'data-snap-taker'), tokenFile, config: snapConfig });
    replicas.push([taker]);
    const shot = await taker.waitOutput(/"stream_seq":(\d+),"ads":(\d+).*uploaded a snapshot of the shard/, 60_000, true);
    const snapSeq = Number(shot[1]);
    const later = idsOfShard('snap-later', 1, 2);
    const l = await rootAdmin.upsertAds({ ads: later.map((id) => adMsg(id)) });
    assert.ok(Number(l.seq) > snapSeq);
    // The default config: restore on, never upload (within the test).
    const fresh = await startReplica({ nats: nats.url, shard: `1/${SHARDS}`, data: path.join(dir, 'data-snap-fresh'), tokenFile, config });
    replicas.push([fresh]);
    const restored = /"stream_seq":(\d+),"ads":(\d+),"bytes":(\d+).*restored the shard from its snapshot/.exec(fresh.stderr());
    assert.ok(restored, fresh.stderr().slice(-3000));
    assert.ok(Number(restored[1]) >= snapSeq);
    const boot = /"applied":(\d+).*replica bootstrapped from a snapshot and the stream/.exec(fresh.stderr());
    assert.ok(boot, fresh.stderr().slice(-3000));
    // Only what came after the snapshot was applied from the stream: far fewer than the shard's history.
    const shard1 = [...rows.keys()].filter((id) => shardOf(id, SHARDS) === 1);
    assert.ok(Number(boot[1]) < shard1.length / 2, `applied ${boot[1]} messages from the stream after the snapshot`);
    // It holds what a replica that applied the whole stream holds.
    const ids = [...shard1, ...before, ...later];
    const want = adminClient(replicaAddr(1, 0));
    const got = adminClient(fresh.addr);
    try {
      const a = (await want.getAds({ ad_ids: ids, min_seq: l.seq! }, { deadlineMs: 20_000 })).ads.map((x) => x.ad_id);
      const b = (await got.getAds({ ad_ids: ids, min_seq: l.seq! }, { deadlineMs: 20_000 })).ads.map((x) => x.ad_id);
      assert.ok(b.includes(later[1]) && b.includes(before[0]));
      assert.deepEqual(b, a);
      // And answers the same Retrieve the same way.
      const req = { attributes: attrs({ country: ['US'] }), user_embedding: row(3, DIM).embedding as number[], num_results: 20, min_seq: l.seq };
      const ra = retrievalClient(replicaAddr(1, 0));
      const rb = retrievalClient(fresh.addr);
      try {
        assert.deepEqual(adIds(await rb.retrieve(req)), adIds(await ra.retrieve(req)));
      } finally {
        ra.close();
        rb.close();
      }
    } finally {
      want.close();
      got.close();
      await rootAdmin.deleteAds({ ad_ids: [...before, ...later] });
    }
  });

  it('when ingest --nats is given a file with a bad row, then it exits 1 naming the line and publishes nothing', async () => {
    const rowsIn = [row(9001, DIM), { ...row(9002, DIM), bid_micros: -5 }, row(9003, DIM)];
    const file = writeCatalog(dir, 'bad.jsonl', rowsIn);
    const r = await ingestNats(file, nats.url, SHARDS);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /bad\.jsonl:2: bid_micros: /);
    const got = await rootAdmin.getAds({ ad_ids: ['ad-9001', 'ad-9003'] });
    assert.equal(got.ads.length, 0);
  });
});
