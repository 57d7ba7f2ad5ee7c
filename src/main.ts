/**
 * start()/stop() of a serving process: load the config, bind the gRPC port (health answers
 * NOT_SERVING while the data loads), load the data directory, serve; stop() drains.
 */
import * as fs from 'node:fs';
import pino, { type Logger } from 'pino';
import { defaultConfig, loadConfigFile } from './config/load';
import type { Config } from './config/schema';
import { FunnelServer, type ServerHooks, type TlsOptions } from './grpc/server';
import { ServingState } from './serving/state';

/** What start() needs. */
export interface StartOptions {
  dataDir: string;
  configFile?: string;
  /** A config object to use instead of a file (tests). */
  config?: Config;
  host?: string;
  port?: number;
  adminTokenFile?: string;
  tls?: TlsOptions;
  drainTimeoutMs?: number;
  logger?: Logger;
  hooks?: ServerHooks;
}

/** A running server. */
export interface Running {
  server: FunnelServer;
  state: ServingState;
  host: string;
  port: number;
  log: Logger;
  /** Drains in-flight calls, checkpoints the ANN index and closes the store. */
  stop(): Promise<void>;
}

/** The default logger: JSON lines on stderr (stdout is kept for the bound address). */
export function defaultLogger(): Logger {
  return pino({ name: 'funnel', level: process.env.FUNNEL_LOG_LEVEL ?? 'info' }, pino.destination(2));
}

function readToken(file: string): string {
  const token = fs.readFileSync(file, 'utf8').trim();
  if (token.length < 16) throw new Error(`${file}: the admin token must be at least 16 characters`);
  return token;
}

/** Starts a server on a data directory. */
export async function start(options: StartOptions): Promise<Running> {
  const log = options.logger ?? defaultLogger();
  const config = options.config ?? (options.configFile ? loadConfigFile(options.configFile) : defaultConfig());
  const host = options.host ?? '127.0.0.1';
  const server = new FunnelServer(
    config,
    {
      host,
      port: options.port ?? 50051,
      adminToken: options.adminTokenFile ? readToken(options.adminTokenFile) : undefined,
      tls: options.tls,
      drainTimeoutMs: options.drainTimeoutMs ?? 10_000,
    },
    log,
    options.hooks,
  );
  const port = await server.listen();
  let state: ServingState;
  try {
    state = await ServingState.open(options.dataDir, config, log);
  } catch (err) {
    server.forceStop();
    throw err;
  }
  state.startUpkeep();
  server.attach(state);
  let stopping: Promise<void> | undefined;
  return {
    server,
    state,
    host,
    port,
    log,
    stop() {
      stopping ??= (async () => {
        await server.drain();
        await state.close();
      })();
      return stopping;
    },
  };
}
