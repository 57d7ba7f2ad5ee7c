/**
 * `funnel explain`: a client for people. Reads a JSON RetrieveRequest (as `funnel retrieve`
 * does, plus proto3 JSON's lowerCamelCase names), calls Explain for the given ad ids with Admin's credentials (a bearer token from a file,
 * or a client certificate under mutual TLS) and prints one table row per asked ad and a summary
 * of the response, or the ExplainResponse as JSON.
 */
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { retrieveFromJson, retrieveToJson } from '../grpc/request-json';
import { channelCredentials, readRequest, retrievalClient } from './retrieve-command';

/** Options as commander parses them. */
export interface ExplainCommandOptions {
  addr: string;
  request: string;
  adIds: string[];
  adminTokenFile?: string;
  json: boolean;
  timeoutMs: number;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
}

/** One AdExplanation as the client decodes it (fields at their default are absent). */
export interface AdExplanationMsg {
  ad_id?: string;
  outcome?: string;
  stage?: string;
  reason?: string;
  detail?: string;
  position?: number;
  score?: number;
}

/** The ExplainResponse as the client decodes it. */
export interface ExplainResponseMsg {
  response?: { candidates?: unknown[]; degraded?: boolean; degraded_stages?: string[]; pipeline?: string; data_seq?: string };
  ads?: AdExplanationMsg[];
}

/** Splits one `--ad-ids` value (`ID,ID`, spaces around ids ignored) onto `previous`; throws on an empty id. */
export function parseAdIds(value: string, previous: string[] = []): string[] {
  const ids = value.split(',').map((s) => s.trim());
  if (ids.some((id) => id === '')) throw new Error(`--ad-ids must be a comma-separated list of ad ids, got ${JSON.stringify(value)}`);
  return previous.concat(ids);
}

// A returned ad always has a score (0 for a zero bid); for the others 0 means "never ranked".
const score = (a: AdExplanationMsg): string => (a.score || a.outcome === 'returned' ? String(Number((a.score ?? 0).toPrecision(6))) : '-');

/** The table people read: a header and one row per explanation (ad_id, outcome, stage, reason, position, score, detail), columns padded except the last, then the response summary line. */
export function formatExplain(res: ExplainResponseMsg): string {
  const header = ['ad_id', 'outcome', 'stage', 'reason', 'position', 'score', 'detail'];
  const rows = (res.ads ?? []).map((a) => [a.ad_id ?? '', a.outcome ?? '', a.stage || '-', a.reason || '-', a.position ? String(a.position) : '-', score(a), a.detail ?? '']);
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => r[i].length)));
  const lines = all.map((r) =>
    r
      .map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i])))
      .join('  ')
      .trimEnd(),
  );
  const response = res.response ?? {};
  const n = response.candidates?.length ?? 0;
  const degraded = response.degraded_stages ?? [];
  lines.push(
    `response: ${n} candidate${n === 1 ? '' : 's'} returned (pipeline ${response.pipeline || '-'}, data_seq ${response.data_seq ?? '0'}); ` +
      `degraded stages: ${degraded.length > 0 ? degraded.join(', ') : 'none'}`,
  );
  return lines.join('\n') + '\n';
}

/** Runs `funnel explain`; resolves to the exit code (0 ok, 1 the call failed, 2 bad request file, ad ids or token file). */
export async function runExplain(opts: ExplainCommandOptions): Promise<number> {
  let request: unknown;
  let token: string | undefined;
  try {
    // Checked field by field here, so a bad file exits 2 naming the field, and sent in proto
    // field names (the file may use proto3 JSON's lowerCamelCase ones).
    request = retrieveToJson(retrieveFromJson(readRequest(opts.request)));
  } catch (err) {
    process.stderr.write(`funnel explain: ${(err as Error).message}\n`);
    return 2;
  }
  if (opts.adIds.length === 0) {
    process.stderr.write('funnel explain: --ad-ids names no ad\n');
    return 2;
  }
  if (opts.adminTokenFile !== undefined) {
    try {
      token = fs.readFileSync(opts.adminTokenFile, 'utf8').trim();
    } catch (err) {
      process.stderr.write(`funnel explain: cannot read --admin-token-file: ${(err as Error).message}\n`);
      return 2;
    }
    if (token === '') {
      process.stderr.write(`funnel explain: the token file ${opts.adminTokenFile} is empty\n`);
      return 2;
    }
  }
  let creds: grpc.ChannelCredentials;
  try {
    creds = channelCredentials(opts);
  } catch (err) {
    process.stderr.write(`funnel explain: ${(err as Error).message}\n`);
    return 2;
  }
  const client = retrievalClient(opts.addr, creds);
  const metadata = new grpc.Metadata();
  if (token !== undefined) metadata.set('authorization', `Bearer ${token}`);
  try {
    const res = await new Promise<ExplainResponseMsg>((resolve, reject) => {
      client.Explain({ request, ad_ids: opts.adIds }, metadata, { deadline: Date.now() + opts.timeoutMs }, (err: grpc.ServiceError | null, r: ExplainResponseMsg) =>
        err ? reject(err) : resolve(r),
      );
    });
    process.stdout.write(opts.json ? JSON.stringify(res, null, 2) + '\n' : formatExplain(res));
    return 0;
  } catch (err) {
    const e = err as grpc.ServiceError;
    process.stderr.write(`funnel explain: ${grpc.status[e.code] ?? e.code}: ${e.details ?? e.message}\n`);
    return 1;
  } finally {
    client.close();
  }
}
