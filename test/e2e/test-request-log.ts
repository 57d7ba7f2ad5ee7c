/**
 * The Retrieve request log end to end: a real server with `requestLog` at sample 1 answers a few
 * Retrieves over gRPC; once it has stopped, readRequestLog gives back each answered request as
 * sent, with the pipeline, data sequence number and ad_ids of its answer.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { parseConfigObject } from '../../src/config/load';
import { blankRetrieve, type DecodedRetrieve } from '../../src/grpc/codec';
import { start, type Running } from '../../src/main';
import { readRequestLog, type RequestLogLine } from '../../src/telemetry/request-log';
import { row, tempDir } from '../fixtures/catalog';
import { adIds, attrs, ingestRows, retrievalClient, rpcError, type RetrievalClient, type RetrieveRequestMsg, type RetrieveResponseMsg } from '../fixtures/e2e-server';

const DIM = 8;

function embedding(seed: number): number[] {
  return Array.from({ length: DIM }, (_, i) => Math.cos(seed * 2.3 + i * 0.7) / 3);
}

/** What the server decodes from `msg`: unset fields at their defaults, the embedding as float32. */
function decoded(msg: RetrieveRequestMsg): DecodedRetrieve {
  return {
    ...blankRetrieve(),
    ...msg,
    attributes: Object.fromEntries(Object.entries(msg.attributes ?? {}).map(([k, v]) => [k, { values: v.values ?? [] }])),
    user_embedding: Float32Array.from(msg.user_embedding ?? []),
    min_seq: Number(msg.min_seq ?? 0),
  };
}

describe('e2e: request log', () => {
  let dir: string;
  let running: Running | undefined;
  let client: RetrievalClient | undefined;
  before(async () => {
    dir = tempDir('e2e-reqlog');
    const rows = Array.from({ length: 40 }, (_, n) => row(n, DIM, n < 10 ? { targeting: [{ country: { any_of: ['US'] } }] } : {}));
    const dataDir = await ingestRows(dir, rows);
    running = await start({
      dataDir,
      config: parseConfigObject({ pipelines: { default: {}, other: {} } }, 'e2e'),
      host: '127.0.0.1',
      port: 0,
      drainTimeoutMs: 5_000,
      logger: pino({ level: 'silent' }),
      tracing: { env: {} },
      requestLog: { dir: path.join(dir, 'request-log'), sample: 1 },
    });
    client = retrievalClient(`127.0.0.1:${running.port}`);
  });
  after(async () => {
    client?.close();
    await running?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('when Retrieves are answered and the server stops, then the log holds each answered request as sent, with its pipeline, data_seq and ad_ids', async () => {
    const requests: RetrieveRequestMsg[] = [
      { request_id: 'r-1', user_id: 'u-1', user_embedding: embedding(1), num_results: 5 },
      { request_id: 'r-2', attributes: attrs({ country: ['US', 'CA'], platform: ['ios'] }), user_embedding: embedding(2), exclude_ad_ids: ['ad-3'], debug: true },
      { user_id: 'u-3', exclude_advertiser_ids: ['adv-1'], blocked_categories: ['finance'], pipeline: 'other', num_results: 7 },
      {},
    ];
    const answers: RetrieveResponseMsg[] = [];
    for (const req of requests) answers.push(await client!.retrieve(req, { deadlineMs: 10_000 }));
    // A refused request is not an answer, so it is not logged.
    assert.equal((await rpcError(client!.retrieve({ user_embedding: [1, 2, 3] }, { deadlineMs: 10_000 }))).code, grpc.status.INVALID_ARGUMENT);
    assert.ok(answers.some((a) => a.candidates.length > 0));
    client!.close();
    client = undefined;
    const log = running!.requestLog!;
    await running!.stop();
    assert.deepEqual(log.stats(), { written: requests.length, dropped: 0, files: 1, queuedBytes: 0 });

    const lines: RequestLogLine[] = [];
    for await (const l of readRequestLog(path.join(dir, 'request-log'))) lines.push(l);
    assert.equal(lines.length, requests.length);
    lines.forEach((l, i) => {
      assert.equal(l.error, undefined, l.error);
      assert.deepEqual(l.request, decoded(requests[i]), `line ${l.line}`);
      assert.deepEqual(l.entry?.ad_ids, adIds(answers[i]), `line ${l.line}`);
      assert.equal(l.entry?.pipeline, answers[i].pipeline);
      assert.equal(l.entry?.data_seq, Number(answers[i].data_seq));
      assert.ok(!Number.isNaN(Date.parse(l.entry?.time ?? '')));
    });
    assert.equal(lines[2].entry?.pipeline, 'other');
  });
});
