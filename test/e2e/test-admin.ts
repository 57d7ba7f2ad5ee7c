/**
 * Admin end to end: read-your-writes of every call, field round trips, bad input (named field,
 * nothing applied), bearer-token auth, TLS and mutual TLS.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { row, tempDir } from '../fixtures/catalog';
import {
  ADMIN_TOKEN,
  adIds,
  adminClient,
  attrs,
  healthClient,
  retrievalClient,
  rpcError,
  startE2eServer,
  type AdMsg,
  type AdminClient,
  type ClientTransport,
  type E2eServer,
  type RetrieveRequestMsg,
  type RetrieveResponseMsg,
} from '../fixtures/e2e-server';

const DIM = 4;

/** Base ads only a request with segment=base can see, so a probe attribute isolates the ads under test. */
const baseRows = Array.from({ length: 20 }, (_, n) => row(n, DIM, { targeting: [{ segment: { any_of: ['base'] } }] }));

/** An ad only requests with probe=`probe` match. */
function probeAd(adId: string, probe: string, extra: Partial<AdMsg> = {}): AdMsg {
  return {
    ad_id: adId,
    advertiser_id: `adv-${adId}`,
    campaign_id: `camp-${adId}`,
    category: 'probe',
    bid_micros: 2_000_000,
    embedding: [0.5, 0.25, -0.5, 1],
    targeting: [{ attributes: { probe: { any_of: [probe] } } }],
    ...extra,
  };
}

function probeRequest(probe: string, extra: RetrieveRequestMsg = {}): RetrieveRequestMsg {
  return { attributes: attrs({ probe: [probe] }), num_results: 50, ...extra };
}

describe('e2e: Admin', function () {
  describe('read-your-writes and bad input on a bearer-token server', () => {
    let s: E2eServer;
    const find = async (probe: string, extra: RetrieveRequestMsg = {}): Promise<RetrieveResponseMsg> => s.retrieval.retrieve(probeRequest(probe, extra));
    const ids = async (probe: string, extra: RetrieveRequestMsg = {}): Promise<string[]> => adIds(await find(probe, extra));

    before(async () => {
      s = await startE2eServer({
        rows: baseRows,
        config: { pipelines: { default: {}, ann1: { stages: { Ann: { k: 1 } } } } },
      });
    });
    after(async () => {
      await s?.stop();
    });

    it('when a new ad is upserted, then the next Retrieve finds it through Targeting and Ann', async () => {
      const ad = probeAd('new-1', 'p-new');
      assert.deepEqual(await ids('p-new'), []);
      const r = await s.admin.upsertAds({ ads: [ad] });
      assert.equal(r.inserted, 1);
      assert.equal(r.updated ?? 0, 0);
      const res = await find('p-new', { user_embedding: ad.embedding });
      assert.deepEqual(adIds(res), ['new-1']);
      assert.ok(BigInt(res.data_seq ?? '0') >= BigInt(r.seq ?? '1'), `answer at data_seq ${String(res.data_seq)}, write at seq ${String(r.seq)}`);
      assert.deepEqual([...res.candidates[0].sources].sort(), ['Ann', 'Targeting']);
      assert.equal(res.candidates[0].advertiser_id, 'adv-new-1');
      assert.equal(res.candidates[0].campaign_id, 'camp-new-1');
      assert.equal(res.candidates[0].category, 'probe');
    });

    it('when an ad is updated, then its new targeting, category and advertiser apply at once', async () => {
      await s.admin.upsertAds({ ads: [probeAd('upd-1', 'p-upd-a')] });
      assert.deepEqual(await ids('p-upd-a'), ['upd-1']);
      const r = await s.admin.upsertAds({ ads: [probeAd('upd-1', 'p-upd-b', { category: 'other', advertiser_id: 'adv-moved' })] });
      assert.equal(r.updated, 1);
      assert.equal(r.inserted ?? 0, 0);
      assert.deepEqual(await ids('p-upd-a'), []);
      const res = await find('p-upd-b');
      assert.deepEqual(adIds(res), ['upd-1']);
      assert.equal(res.candidates[0].category, 'other');
      assert.equal(res.candidates[0].advertiser_id, 'adv-moved');
      assert.deepEqual(await ids('p-upd-b', { blocked_categories: ['other'] }), []);
      assert.deepEqual(await ids('p-upd-b', { blocked_categories: ['probe'] }), ['upd-1']);
      assert.deepEqual(await ids('p-upd-b', { exclude_advertiser_ids: ['adv-moved'] }), []);
      assert.deepEqual(await ids('p-upd-b', { exclude_advertiser_ids: ['adv-upd-1'] }), ['upd-1']);
    });

    it('when an ad is updated to untargeted (targeting absent), then every request may see it', async () => {
      await s.admin.upsertAds({ ads: [probeAd('upd-2', 'p-upd2')] });
      await s.admin.upsertAds({ ads: [probeAd('upd-2', 'p-upd2', { targeting: [] })] });
      assert.ok((await ids('p-something-else')).includes('upd-2'));
      await s.admin.deleteAds({ ad_ids: ['upd-2'] });
    });

    it('when embeddings are swapped by an update, then the Ann stage (k=1) follows the new vectors', async () => {
      const x = [1, 0, 0, 0];
      const y = [0, 1, 0, 0];
      await s.admin.upsertAds({ ads: [probeAd('vec-x', 'p-vec', { embedding: x }), probeAd('vec-y', 'p-vec', { embedding: y })] });
      const annOf = async () => (await find('p-vec', { pipeline: 'ann1', user_embedding: x })).candidates.filter((c) => c.sources.includes('Ann')).map((c) => c.ad_id);
      assert.deepEqual(await annOf(), ['vec-x']);
      await s.admin.upsertAds({ ads: [probeAd('vec-x', 'p-vec', { embedding: y }), probeAd('vec-y', 'p-vec', { embedding: x })] });
      assert.deepEqual(await annOf(), ['vec-y']);
    });

    it('when an ad is paused, then it is never returned (Targeting or Ann); when activated, then it is back', async () => {
      const ad = probeAd('st-1', 'p-st');
      await s.admin.upsertAds({ ads: [ad] });
      const r = await s.admin.setAdStatus({ ad_ids: ['st-1', 'no-such-ad'], status: 'paused' });
      assert.equal(r.updated, 1);
      assert.deepEqual(r.unknown_ad_ids, ['no-such-ad']);
      assert.deepEqual(await ids('p-st', { user_embedding: ad.embedding }), []);
      assert.equal((await s.admin.getAds({ ad_ids: ['st-1'] })).ads[0].status, 'paused');
      await s.admin.setAdStatus({ ad_ids: ['st-1'], status: 'active' });
      assert.deepEqual(await ids('p-st', { user_embedding: ad.embedding }), ['st-1']);
    });

    it('when an ad is upserted as paused, then it is not returned until activated', async () => {
      await s.admin.upsertAds({ ads: [probeAd('st-2', 'p-st2', { status: 'paused' })] });
      assert.deepEqual(await ids('p-st2'), []);
      await s.admin.setAdStatus({ ad_ids: ['st-2'], status: 'active' });
      assert.deepEqual(await ids('p-st2'), ['st-2']);
    });

    it('when an ad is deleted, then Retrieve never returns it and GetAds omits it; upserting it again brings it back', async () => {
      const ad = probeAd('del-1', 'p-del');
      await s.admin.upsertAds({ ads: [ad, probeAd('del-2', 'p-del')] });
      assert.deepEqual((await ids('p-del')).sort(), ['del-1', 'del-2']);
      const r = await s.admin.deleteAds({ ad_ids: ['del-1', 'never-was'] });
      assert.equal(r.deleted, 1);
      assert.deepEqual(r.unknown_ad_ids, ['never-was']);
      assert.deepEqual(await ids('p-del', { user_embedding: ad.embedding }), ['del-2']);
      const got = await s.admin.getAds({ ad_ids: ['del-1', 'del-2'] });
      assert.deepEqual(
        got.ads.map((a) => a.ad_id),
        ['del-2'],
      );
      await s.admin.upsertAds({ ads: [probeAd('del-1', 'p-del', { embedding: [1, 1, 1, 1] })] });
      assert.deepEqual((await ids('p-del', { user_embedding: [1, 1, 1, 1] })).sort(), ['del-1', 'del-2']);
      assert.deepEqual((await s.admin.getAds({ ad_ids: ['del-1'] })).ads[0].embedding, [1, 1, 1, 1]);
    });

    it('when a deleted ad slot is reused by a new ad, then Ann finds the new vector and no popularity is inherited', async () => {
      const x = [0, 0, 1, 0];
      const y = [0, 0, 0, 1];
      await s.admin.upsertAds({ ads: [probeAd('reuse-old', 'p-reuse', { embedding: x }), probeAd('reuse-keep', 'p-reuse', { embedding: y })] });
      await s.admin.recordEvents({ events: [{ ad_id: 'reuse-old', type: 'CLICK' }] });
      await s.admin.deleteAds({ ad_ids: ['reuse-old'] });
      await s.admin.upsertAds({ ads: [probeAd('reuse-new', 'p-reuse', { embedding: x })] });
      const res = await find('p-reuse', { pipeline: 'ann1', user_embedding: x });
      assert.deepEqual(adIds(res).sort(), ['reuse-keep', 'reuse-new']);
      const byId = new Map(res.candidates.map((c) => [c.ad_id, c.sources]));
      assert.deepEqual(byId.get('reuse-new'), ['Ann', 'Targeting']);
      assert.deepEqual(byId.get('reuse-keep'), ['Targeting']);
    });

    it('when spend reaches or passes the daily budget, then the ad is never returned; a lower report brings it back', async () => {
      const ad = probeAd('sp-1', 'p-sp', { daily_budget_micros: 1_000_000 });
      await s.admin.upsertAds({ ads: [ad, probeAd('sp-2', 'p-sp', { daily_budget_micros: 1_000_000 })] });
      assert.deepEqual((await ids('p-sp')).sort(), ['sp-1', 'sp-2']);
      const r = await s.admin.reportSpend({ entries: [{ ad_id: 'sp-1', spend_micros: 1_000_000 }, { ad_id: 'sp-2', spend_micros: '5000000' }, { ad_id: 'ghost', spend_micros: 1 }] });
      assert.equal(r.applied, 2);
      assert.deepEqual(r.unknown_ad_ids, ['ghost']);
      assert.deepEqual(await ids('p-sp', { user_embedding: ad.embedding }), []);
      await s.admin.reportSpend({ entries: [{ ad_id: 'sp-1', spend_micros: 0 }] });
      assert.deepEqual(await ids('p-sp'), ['sp-1']);
    });

    it('when an ad has a daily budget of 0, then it is never returned', async () => {
      await s.admin.upsertAds({ ads: [probeAd('sp-0', 'p-sp0', { daily_budget_micros: 0 })] });
      assert.deepEqual(await ids('p-sp0'), []);
    });

    it('when clicks are recorded for an ad, then the next Retrieve sources it from Popularity too', async () => {
      await s.admin.upsertAds({ ads: [probeAd('pop-1', 'p-pop')] });
      const before = await find('p-pop');
      assert.deepEqual(before.candidates.map((c) => c.sources), [['Targeting']]);
      const r = await s.admin.recordEvents({
        events: [
          { ad_id: 'pop-1', type: 'IMPRESSION', attributes: attrs({ country: ['US'] }) },
          { ad_id: 'pop-1', type: 'CLICK', timestamp_ms: String(Date.now()), attributes: attrs({ country: ['US'] }) },
          { ad_id: 'nobody', type: 'CLICK' },
        ],
      });
      assert.equal(r.applied, 2);
      assert.deepEqual(r.unknown_ad_ids, ['nobody']);
      const res = await find('p-pop');
      assert.deepEqual(adIds(res), ['pop-1']);
      assert.ok(res.candidates[0].sources.includes('Popularity'), `sources ${res.candidates[0].sources.join(',')}`);
      const seg = await s.retrieval.retrieve({ attributes: attrs({ probe: ['p-pop'], country: ['US'] }) });
      assert.ok(seg.candidates[0].sources.includes('Popularity'));
    });

    it('when a popular ad is paused, then Popularity does not bring it back', async () => {
      await s.admin.upsertAds({ ads: [probeAd('pop-2', 'p-pop2')] });
      await s.admin.recordEvents({ events: [{ ad_id: 'pop-2', type: 'CLICK' }] });
      await s.admin.setAdStatus({ ad_ids: ['pop-2'], status: 'paused' });
      assert.deepEqual(await ids('p-pop2'), []);
      assert.ok(!adIds(await s.retrieval.retrieve({ num_results: 500 })).includes('pop-2'));
    });

    it('when an ad with every field is upserted, then GetAds returns the same fields', async () => {
      const start = '2020-01-02T03:04:05.000Z';
      const end = '2099-06-07T08:09:10.000Z';
      const ad: AdMsg = {
        ad_id: 'rt-1:a/b.c_d-e',
        advertiser_id: 'adv-rt',
        campaign_id: 'camp-rt',
        category: 'finance',
        status: 'paused',
        bid_micros: '1234567',
        daily_budget_micros: '7654321',
        quality: 0.75,
        ctr_prior: 0.125,
        embedding: [0.5, -0.25, 1.5, -2],
        targeting: [
          { attributes: { country: { any_of: ['US', 'CA'], none_of: ['XX'] }, community: { none_of: ['r/nsfw'] } } },
          { attributes: { platform: { any_of: ['ios'] } } },
          { attributes: {} },
        ],
        start_time: start,
        end_time: end,
      };
      await s.admin.upsertAds({ ads: [ad] });
      const minimal = probeAd('rt-2', 'p-rt');
      delete minimal.targeting;
      await s.admin.upsertAds({ ads: [minimal] });
      const got = await s.admin.getAds({ ad_ids: ['unknown-x', 'rt-2', 'rt-1:a/b.c_d-e'] });
      assert.deepEqual(
        got.ads.map((a) => a.ad_id),
        ['rt-2', 'rt-1:a/b.c_d-e'],
        'known ads in request order, unknown absent',
      );
      const a = got.ads[1];
      assert.equal(a.advertiser_id, 'adv-rt');
      assert.equal(a.campaign_id, 'camp-rt');
      assert.equal(a.category, 'finance');
      assert.equal(a.status, 'paused');
      assert.equal(String(a.bid_micros), '1234567');
      assert.equal(String(a.daily_budget_micros), '7654321');
      assert.equal(a.quality, 0.75);
      assert.equal(a.ctr_prior, 0.125);
      assert.deepEqual(a.embedding, [0.5, -0.25, 1.5, -2]);
      assert.equal(Date.parse(a.start_time ?? ''), Date.parse(start));
      assert.equal(Date.parse(a.end_time ?? ''), Date.parse(end));
      const norm = (t: AdMsg['targeting']) =>
        (t ?? []).map((c) =>
          Object.fromEntries(
            Object.entries(c.attributes ?? {})
              .sort(([x], [y]) => (x < y ? -1 : 1))
              .map(([k, p]) => [k, { any_of: [...(p.any_of ?? [])].sort(), none_of: [...(p.none_of ?? [])].sort() }]),
          ),
        );
      assert.deepEqual(norm(a.targeting), norm(ad.targeting));
      const m = got.ads[0];
      assert.equal(m.status, 'active', 'status defaults to active');
      assert.equal(m.daily_budget_micros, undefined, 'no budget stays unlimited');
      assert.deepEqual(m.targeting ?? [], [], 'absent targeting stays absent');
      assert.ok(!m.start_time && !m.end_time, 'no flight window');
      assert.equal(m.quality, 0.5);
      assert.equal(m.ctr_prior, 0.01);
      await s.admin.deleteAds({ ad_ids: ['rt-2'] });
    });

    it('when an ad has a flight window in the future or the past, then it is not returned; widening the window brings it back', async () => {
      const day = 86_400_000;
      await s.admin.upsertAds({
        ads: [
          probeAd('fl-future', 'p-fl', { start_time: new Date(Date.now() + day).toISOString() }),
          probeAd('fl-past', 'p-fl', { end_time: new Date(Date.now() - day).toISOString() }),
          probeAd('fl-now', 'p-fl', { start_time: new Date(Date.now() - day).toISOString(), end_time: new Date(Date.now() + day).toISOString() }),
        ],
      });
      assert.deepEqual(await ids('p-fl'), ['fl-now']);
      await s.admin.upsertAds({ ads: [probeAd('fl-past', 'p-fl', { end_time: new Date(Date.now() + day).toISOString() })] });
      assert.deepEqual((await ids('p-fl')).sort(), ['fl-now', 'fl-past']);
    });

    it('when a flight window opens or closes while the server runs, then the ad is served only inside its window', async () => {
      const boundary = Date.now() + 1200;
      await s.admin.upsertAds({
        ads: [probeAd('live-open', 'p-live-open', { start_time: new Date(boundary).toISOString() }), probeAd('live-close', 'p-live-close', { end_time: new Date(boundary).toISOString() })],
      });
      let opened = false;
      let closedChecks = 0;
      // Served within seconds of its start (the upkeep tick), never before; never after its end.
      while (!opened || closedChecks < 3) {
        const sent = Date.now();
        const open = await ids('p-live-open');
        const close = await ids('p-live-close');
        const received = Date.now();
        if (received < boundary) assert.deepEqual(open, [], 'served before its start_time');
        if (open.length > 0) opened = true;
        if (sent >= boundary) {
          assert.deepEqual(close, [], 'served after its end_time');
          closedChecks++;
        }
        assert.ok(Date.now() < boundary + 15_000, 'the ad whose window opened was never served');
        await new Promise((r) => setTimeout(r, 100));
      }
    });

    const badUpserts: { name: string; ad: (good: AdMsg) => AdMsg; field: string }[] = [
      { name: 'quality is out of [0, 1]', ad: (g) => ({ ...g, quality: 2 }), field: 'ads[1].quality' },
      { name: 'the embedding has the wrong dimension', ad: (g) => ({ ...g, embedding: [1, 2, 3] }), field: 'ads[1].embedding' },
      { name: 'the embedding is empty', ad: (g) => ({ ...g, embedding: [] }), field: 'ads[1].embedding' },
      { name: 'the embedding holds NaN', ad: (g) => ({ ...g, embedding: [1, NaN, 0, 0] }), field: 'ads[1].embedding' },
      { name: 'ad_id has a forbidden character', ad: (g) => ({ ...g, ad_id: 'bad id!' }), field: 'ads[1].ad_id' },
      { name: 'ad_id is missing', ad: (g) => ({ ...g, ad_id: '' }), field: 'ads[1].ad_id' },
      { name: 'advertiser_id is missing', ad: (g) => ({ ...g, advertiser_id: '' }), field: 'ads[1].advertiser_id' },
      { name: 'category is missing', ad: (g) => ({ ...g, category: '' }), field: 'ads[1].category' },
      { name: 'status is unknown', ad: (g) => ({ ...g, status: 'deleted' }), field: 'ads[1].status' },
      { name: 'bid_micros is negative', ad: (g) => ({ ...g, bid_micros: -5 }), field: 'ads[1].bid_micros' },
      { name: 'bid_micros is past 2^53', ad: (g) => ({ ...g, bid_micros: '9007199254740993' }), field: 'ads[1].bid_micros' },
      { name: 'daily_budget_micros is negative', ad: (g) => ({ ...g, daily_budget_micros: -1 }), field: 'ads[1].daily_budget_micros' },
      { name: 'a predicate has neither any_of nor none_of', ad: (g) => ({ ...g, targeting: [{ attributes: { country: {} } }] }), field: 'ads[1].targeting[0]' },
      { name: 'start_time is not RFC 3339', ad: (g) => ({ ...g, start_time: 'yesterday' }), field: 'ads[1].start_time' },
      { name: 'end_time is before start_time', ad: (g) => ({ ...g, start_time: '2030-01-02T00:00:00Z', end_time: '2030-01-01T00:00:00Z' }), field: 'ads[1].end_time' },
      { name: 'the ad_id repeats in the batch', ad: (g) => ({ ...g }), field: 'ads[1].ad_id' },
    ];
    badUpserts.forEach((c, i) => {
      it(`when one ad of a batch is bad (${c.name}), then INVALID_ARGUMENT names ${c.field} and none of the batch is applied`, async () => {
        const probe = `p-bad-${i}`;
        const good = probeAd(`bad-good-${i}`, probe);
        const err = await rpcError(s.admin.upsertAds({ ads: [good, c.ad(good)] }));
        assert.equal(err.code, grpc.status.INVALID_ARGUMENT, err.message);
        assert.ok(err.details.includes(c.field), `details ${JSON.stringify(err.details)} do not name ${c.field}`);
        assert.deepEqual((await s.admin.getAds({ ad_ids: [good.ad_id ?? ''] })).ads, []);
        assert.deepEqual(await ids(probe), []);
      });
    });

    it('when UpsertAds has no ads, then INVALID_ARGUMENT names ads', async () => {
      const err = await rpcError(s.admin.upsertAds({ ads: [] }));
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
      assert.match(err.details, /\bads\b/);
    });

    it('when SetAdStatus has a bad status or no ids, then INVALID_ARGUMENT names the field and nothing changes', async () => {
      await s.admin.upsertAds({ ads: [probeAd('bs-1', 'p-bs')] });
      const e1 = await rpcError(s.admin.setAdStatus({ ad_ids: ['bs-1'], status: 'deleted' }));
      assert.equal(e1.code, grpc.status.INVALID_ARGUMENT);
      assert.ok(e1.details.includes('status'), e1.details);
      const e2 = await rpcError(s.admin.setAdStatus({ ad_ids: [], status: 'paused' }));
      assert.equal(e2.code, grpc.status.INVALID_ARGUMENT);
      assert.ok(e2.details.includes('ad_ids'), e2.details);
      assert.deepEqual(await ids('p-bs'), ['bs-1']);
    });

    it('when DeleteAds or GetAds has no ids, then INVALID_ARGUMENT names ad_ids', async () => {
      for (const p of [s.admin.deleteAds({ ad_ids: [] }), s.admin.getAds({ ad_ids: [] })]) {
        const err = await rpcError(p);
        assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
        assert.ok(err.details.includes('ad_ids'), err.details);
      }
    });

    it('when one spend entry is bad, then INVALID_ARGUMENT names it and the good entries are not applied', async () => {
      await s.admin.upsertAds({ ads: [probeAd('bsp-1', 'p-bsp', { daily_budget_micros: 100 })] });
      const err = await rpcError(s.admin.reportSpend({ entries: [{ ad_id: 'bsp-1', spend_micros: 100 }, { ad_id: 'bsp-1', spend_micros: -1 }] }));
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
      assert.ok(err.details.includes('entries[1].spend_micros'), err.details);
      const e2 = await rpcError(s.admin.reportSpend({ entries: [{ ad_id: 'bsp-1', spend_micros: 100 }, { ad_id: '', spend_micros: 1 }] }));
      assert.ok(e2.details.includes('entries[1].ad_id'), e2.details);
      assert.deepEqual(await ids('p-bsp'), ['bsp-1']);
    });

    it('when one event is bad, then INVALID_ARGUMENT names it and the good events are not applied', async () => {
      await s.admin.upsertAds({ ads: [probeAd('bev-1', 'p-bev')] });
      const err = await rpcError(
        s.admin.recordEvents({
          events: [
            { ad_id: 'bev-1', type: 'CLICK' },
            { ad_id: 'bev-1', type: 'EVENT_TYPE_UNSPECIFIED' as 'CLICK' },
          ],
        }),
      );
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
      assert.ok(err.details.includes('events[1].type'), err.details);
      const e2 = await rpcError(s.admin.recordEvents({ events: [{ ad_id: 'bev-1', type: 'CLICK' }, { ad_id: 'bev-1', type: 'CLICK', timestamp_ms: String(Date.now() + 10 * 86_400_000) }] }));
      assert.ok(e2.details.includes('events[1].timestamp_ms'), e2.details);
      const res = await find('p-bev');
      assert.deepEqual(res.candidates.map((c) => c.sources), [['Targeting']], 'no popularity from the refused batches');
    });

    it('when Admin is called without a token or with a wrong one, then UNAUTHENTICATED and nothing is applied', async () => {
      const clients: AdminClient[] = [adminClient(s.address, null), adminClient(s.address, 'wrong-token-0123456789abcdef'), adminClient(s.address, '')];
      try {
        for (const c of clients) {
          const calls: Promise<unknown>[] = [
            c.upsertAds({ ads: [probeAd('auth-1', 'p-auth')] }),
            c.setAdStatus({ ad_ids: ['ad-1'], status: 'paused' }),
            c.deleteAds({ ad_ids: ['ad-2'] }),
            c.getAds({ ad_ids: ['ad-1'] }),
            c.reportSpend({ entries: [{ ad_id: 'ad-3', spend_micros: 1 }] }),
            c.recordEvents({ events: [{ ad_id: 'ad-4', type: 'CLICK' }] }),
          ];
          for (const p of calls) assert.equal((await rpcError(p)).code, grpc.status.UNAUTHENTICATED);
        }
        const md = new grpc.Metadata();
        md.set('authorization', `Basic ${ADMIN_TOKEN}`);
        assert.equal((await rpcError(clients[0].getAds({ ad_ids: ['ad-1'] }, { metadata: md }))).code, grpc.status.UNAUTHENTICATED);
      } finally {
        for (const c of clients) c.close();
      }
      assert.deepEqual(await ids('p-auth'), []);
      const got = await s.admin.getAds({ ad_ids: ['ad-1', 'ad-2'] });
      assert.deepEqual(
        got.ads.map((a) => [a.ad_id, a.status]),
        [
          ['ad-1', 'active'],
          ['ad-2', 'active'],
        ],
      );
    });

    it('when Retrieve is called without any token, then it is answered', async () => {
      const c = retrievalClient(s.address);
      try {
        const res = await c.retrieve({ attributes: attrs({ segment: ['base'] }), num_results: 5 });
        assert.equal(res.candidates.length, 5);
      } finally {
        c.close();
      }
    });
  });

  describe('on an empty data directory', () => {
    let s: E2eServer;
    before(async () => {
      s = await startE2eServer({ rows: [] });
    });
    after(async () => {
      await s?.stop();
    });

    it('when the first ads are upserted, then they set the dimension, Ann serves them, and another dimension is refused', async () => {
      assert.deepEqual(adIds(await s.retrieval.retrieve({})), []);
      const e0 = await rpcError(s.retrieval.retrieve({ user_embedding: [1, 0, 0] }));
      assert.equal(e0.code, grpc.status.INVALID_ARGUMENT);
      assert.ok(e0.details.includes('user_embedding'));
      const e1 = await rpcError(s.admin.upsertAds({ ads: [probeAd('first-a', 'p-first', { embedding: [1, 0, 0] }), probeAd('first-b', 'p-first', { embedding: [0, 1] })] }));
      assert.equal(e1.code, grpc.status.INVALID_ARGUMENT);
      assert.ok(e1.details.includes('ads[1].embedding'), e1.details);
      assert.deepEqual((await s.admin.getAds({ ad_ids: ['first-a'] })).ads, []);
      await s.admin.upsertAds({ ads: [probeAd('first-a', 'p-first', { embedding: [1, 0, 0] }), probeAd('first-b', 'p-first', { embedding: [0, 1, 0] })] });
      const res = await s.retrieval.retrieve({ attributes: attrs({ probe: ['p-first'] }), user_embedding: [0, 1, 0] });
      assert.deepEqual(adIds(res).sort(), ['first-a', 'first-b']);
      for (const c of res.candidates) assert.ok(c.sources.includes('Ann'), `${c.ad_id}: ${c.sources.join(',')}`);
      const e2 = await rpcError(s.admin.upsertAds({ ads: [probeAd('first-c', 'p-first', { embedding: [1, 0, 0, 0] })] }));
      assert.equal(e2.code, grpc.status.INVALID_ARGUMENT);
      assert.ok(e2.details.includes('ads[0].embedding'), e2.details);
      const e3 = await rpcError(s.retrieval.retrieve({ user_embedding: [1, 0, 0, 0] }));
      assert.ok(e3.details.includes('user_embedding'), e3.details);
    });
  });

  describe('on a server started without an admin token', () => {
    let s: E2eServer;
    before(async () => {
      s = await startE2eServer({ rows: baseRows, adminToken: null });
    });
    after(async () => {
      await s?.stop();
    });

    it('when Admin is called with a bearer token, then UNAUTHENTICATED', async () => {
      const c = adminClient(s.address, ADMIN_TOKEN);
      try {
        assert.equal((await rpcError(c.getAds({ ad_ids: ['ad-1'] }))).code, grpc.status.UNAUTHENTICATED);
        assert.equal((await rpcError(c.upsertAds({ ads: [probeAd('x', 'p-x')] }))).code, grpc.status.UNAUTHENTICATED);
      } finally {
        c.close();
      }
      const res = await s.retrieval.retrieve({ attributes: attrs({ probe: ['p-x'] }) });
      assert.deepEqual(adIds(res), []);
    });
  });

  describe('TLS', () => {
    let pki: string;
    const pem = (name: string) => fs.readFileSync(path.join(pki, name));
    // The certificate names 127.0.0.1 too, but Node warns about IP addresses as TLS server names.
    const tls = (credentials: grpc.ChannelCredentials): ClientTransport => ({ credentials, options: { 'grpc.ssl_target_name_override': 'localhost' } });

    before(function () {
      pki = tempDir('pki');
      const openssl = (...args: string[]) => execFileSync('/usr/bin/openssl', args, { cwd: pki, stdio: 'pipe' });
      const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
      for (const ca of ['ca', 'other-ca']) openssl('req', '-x509', ...ec, '-keyout', `${ca}.key`, '-out', `${ca}.crt`, '-days', '2', '-subj', `/CN=funnel e2e ${ca}`);
      fs.writeFileSync(path.join(pki, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
      fs.writeFileSync(path.join(pki, 'client.ext'), 'extendedKeyUsage=clientAuth\n');
      const leaf = (name: string, ca: string, ext: string) => {
        openssl('req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
        openssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.crt`, '-days', '2', '-extfile', ext);
      };
      leaf('server', 'ca', 'server.ext');
      leaf('client', 'ca', 'client.ext');
      leaf('rogue', 'other-ca', 'client.ext');
    });
    after(() => {
      if (pki) fs.rmSync(pki, { recursive: true, force: true });
    });

    describe('server TLS with a bearer token', () => {
      let s: E2eServer;
      before(async () => {
        s = await startE2eServer({
          rows: baseRows,
          tls: { cert: path.join(pki, 'server.crt'), key: path.join(pki, 'server.key') },
          transport: tls(grpc.credentials.createSsl(pem('ca.crt'))),
        });
      });
      after(async () => {
        await s?.stop();
      });

      it('when a TLS client trusting the CA calls, then Retrieve, Health and Admin (with the token) answer', async () => {
        const res = await s.retrieval.retrieve({ attributes: attrs({ segment: ['base'] }), num_results: 3 });
        assert.equal(res.candidates.length, 3);
        assert.equal(await s.health.check(''), 'SERVING');
        await s.admin.upsertAds({ ads: [probeAd('tls-1', 'p-tls')] });
        assert.deepEqual(adIds(await s.retrieval.retrieve({ attributes: attrs({ probe: ['p-tls'] }) })), ['tls-1']);
      });

      it('when the TLS client omits the token, then Admin is UNAUTHENTICATED', async () => {
        const c = adminClient(s.address, null, tls(grpc.credentials.createSsl(pem('ca.crt'))));
        try {
          assert.equal((await rpcError(c.getAds({ ad_ids: ['ad-1'] }))).code, grpc.status.UNAUTHENTICATED);
        } finally {
          c.close();
        }
      });

      it('when a plaintext client or one not trusting the CA calls, then the call fails UNAVAILABLE', async () => {
        for (const credentials of [grpc.credentials.createInsecure(), grpc.credentials.createSsl(pem('other-ca.crt'))]) {
          const c = retrievalClient(s.address, tls(credentials));
          try {
            const err = await rpcError(c.retrieve({}, { deadlineMs: 10_000 }));
            assert.equal(err.code, grpc.status.UNAVAILABLE, err.message);
          } finally {
            c.close();
          }
        }
      });
    });

    describe('mutual TLS (tlsClientCa)', () => {
      let s: E2eServer;
      let creds: grpc.ChannelCredentials;
      before(async () => {
        creds = grpc.credentials.createSsl(pem('ca.crt'), pem('client.key'), pem('client.crt'));
        s = await startE2eServer({
          rows: baseRows,
          adminToken: null,
          tls: { cert: path.join(pki, 'server.crt'), key: path.join(pki, 'server.key'), clientCa: path.join(pki, 'ca.crt') },
          transport: tls(creds),
        });
      });
      after(async () => {
        await s?.stop();
      });

      it('when a client presents a certificate of the client CA, then it calls Admin without a token, and Retrieve', async () => {
        const c = adminClient(s.address, null, tls(creds));
        try {
          await c.upsertAds({ ads: [probeAd('mtls-1', 'p-mtls')] });
          assert.deepEqual(
            (await c.getAds({ ad_ids: ['mtls-1'] })).ads.map((a) => a.ad_id),
            ['mtls-1'],
          );
        } finally {
          c.close();
        }
        assert.deepEqual(adIds(await s.retrieval.retrieve({ attributes: attrs({ probe: ['p-mtls'] }) })), ['mtls-1']);
        const h = healthClient(s.address, tls(creds));
        try {
          assert.equal(await h.check('funnel.v1.Admin'), 'SERVING');
        } finally {
          h.close();
        }
      });

      it('when a client presents no certificate or one of another CA, then its calls fail and nothing is applied', async () => {
        const without = grpc.credentials.createSsl(pem('ca.crt'));
        const rogue = grpc.credentials.createSsl(pem('ca.crt'), pem('rogue.key'), pem('rogue.crt'));
        for (const credentials of [without, rogue]) {
          const c = adminClient(s.address, ADMIN_TOKEN, tls(credentials));
          const r = retrievalClient(s.address, tls(credentials));
          try {
            const e1 = await rpcError(c.upsertAds({ ads: [probeAd('mtls-x', 'p-mtls-x')] }, { deadlineMs: 10_000 }));
            assert.equal(e1.code, grpc.status.UNAVAILABLE, e1.message);
            const e2 = await rpcError(r.retrieve({}, { deadlineMs: 10_000 }));
            assert.equal(e2.code, grpc.status.UNAVAILABLE, e2.message);
          } finally {
            c.close();
            r.close();
          }
        }
        assert.deepEqual((await s.admin.getAds({ ad_ids: ['mtls-x'] })).ads, []);
      });
    });
  });
});
