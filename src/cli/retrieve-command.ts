/**
 * `funnel retrieve`: a client for people. Reads a JSON RetrieveRequest (proto field names;
 * attributes as {"country": ["US"]} or {"country": {"values": ["US"]}}) from a file or stdin,
 * calls Retrieve and prints the response as JSON.
 */
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { packageDefinition } from '../grpc/proto';

/** Options as commander parses them. */
export interface RetrieveCommandOptions {
  addr: string;
  request?: string;
  timeoutMs: number;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
}

/** Reads a JSON RetrieveRequest from `file` (stdin when absent or `-`), attribute shorthands turned into `{values}`; throws on unreadable or non-object JSON. */
export function readRequest(file: string | undefined): Record<string, unknown> {
  const text = fs.readFileSync(file && file !== '-' ? file : 0, 'utf8');
  const req = JSON.parse(text) as Record<string, unknown>;
  if (req === null || typeof req !== 'object' || Array.isArray(req)) throw new Error('the request must be a JSON object');
  const attrs = req.attributes as Record<string, unknown> | undefined;
  if (attrs && typeof attrs === 'object') {
    const out: Record<string, { values: unknown }> = {};
    for (const [k, v] of Object.entries(attrs)) out[k] = Array.isArray(v) ? { values: v } : typeof v === 'string' ? { values: [v] } : (v as { values: unknown });
    req.attributes = out;
  }
  return req;
}

/** Channel credentials of the client commands: TLS (mutual with --tls-cert/--tls-key) when --tls-ca is given, else plaintext; throws when a file cannot be read. */
export function channelCredentials(opts: { tlsCa?: string; tlsCert?: string; tlsKey?: string }): grpc.ChannelCredentials {
  return opts.tlsCa
    ? grpc.credentials.createSsl(fs.readFileSync(opts.tlsCa), opts.tlsKey ? fs.readFileSync(opts.tlsKey) : null, opts.tlsCert ? fs.readFileSync(opts.tlsCert) : null)
    : grpc.credentials.createInsecure();
}

/** A funnel.v1.Retrieval client (dynamic stub: methods by name) for `addr`. */
export function retrievalClient(addr: string, creds: grpc.ChannelCredentials): grpc.Client & Record<string, Function> {
  const def = grpc.loadPackageDefinition(packageDefinition()) as unknown as {
    funnel: { v1: { Retrieval: new (addr: string, creds: grpc.ChannelCredentials) => grpc.Client & Record<string, Function> } };
  };
  return new def.funnel.v1.Retrieval(addr, creds);
}

/** Runs `funnel retrieve`; resolves to the exit code (0 ok, 1 the call failed, 2 bad request file). */
export async function runRetrieve(opts: RetrieveCommandOptions): Promise<number> {
  let request: unknown;
  try {
    request = readRequest(opts.request);
  } catch (err) {
    process.stderr.write(`funnel retrieve: ${(err as Error).message}\n`);
    return 2;
  }
  const client = retrievalClient(opts.addr, channelCredentials(opts));
  try {
    const res = await new Promise<unknown>((resolve, reject) => {
      client.Retrieve(request, { deadline: Date.now() + opts.timeoutMs }, (err: grpc.ServiceError | null, r: unknown) => (err ? reject(err) : resolve(r)));
    });
    process.stdout.write(JSON.stringify(res, null, 2) + '\n');
    return 0;
  } catch (err) {
    const e = err as grpc.ServiceError;
    process.stderr.write(`funnel retrieve: ${grpc.status[e.code] ?? e.code}: ${e.details ?? e.message}\n`);
    return 1;
  } finally {
    client.close();
  }
}
