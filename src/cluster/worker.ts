/**
 * The worker side of `funnel serve --workers N` (see primary.ts and protocol.ts): joins the
 * primary, binds the shared port only when told to (or at once for the first worker at
 * start-up), tells the primary of each Admin write and waits until every other worker applied
 * it, applies the others' writes when asked, and hands its metrics registry to prom-client's
 * cluster aggregation.
 */
import { AggregatorRegistry } from 'prom-client';
import { setParentDeathSignal } from '../native/index';
import type { Logger } from 'pino';
import type { Running } from '../main';
import type { ServingState, StateOptions } from '../serving/state';
import { ENV, isFunnelMessage, type PrimaryMessage, type WorkerMessage } from './protocol';

/** A worker's link to its primary, made before start() and attached after. */
export interface WorkerLink {
  index: number;
  /** Bind before loading (the first worker at start-up: health says NOT_SERVING meanwhile). */
  early: boolean;
  stateOptions: StateOptions;
  /** For start(): resolves to the port once the primary lets this worker take connections. */
  bindLate?: (state: ServingState) => Promise<number>;
  /** Wires the running server to the primary and reports it serving. */
  attach(running: Running): void;
  /** Disconnects from the primary (after a drain), so the process can exit. */
  leave(): void;
}

function send(m: WorkerMessage): void {
  // With a callback, the EPIPE of a send racing the primary's exit is not an uncaught error; the
  // channel's 'disconnect' then stops this worker.
  if (process.connected) process.send!(m, undefined, undefined, () => undefined);
}

/** Joins the primary (call once, in a cluster worker, before start()). */
export function joinPrimary(log: Logger): WorkerLink {
  const index = Number(process.env[ENV.index] ?? '0');
  const early = process.env[ENV.bind] === 'early';
  let state: ServingState | null = null;
  let running: Running | null = null;
  let floor = 0;
  let wantCatchUp = false;
  let catching = false;
  /** The highest sequence number the primary asked this worker to reach. */
  let wanted = 0;
  let listenPort: number | null = null;
  let onListen: ((port: number) => void) | null = null;
  const acks = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  let nextId = 1;

  const catchUp = () => {
    if (!state) {
      wantCatchUp = true;
      return;
    }
    if (catching) {
      wantCatchUp = true;
      return;
    }
    catching = true;
    wantCatchUp = false;
    state.catchUp().then(
      (seq) => {
        catching = false;
        send({ funnel: 'applied', seq });
        if (wantCatchUp) catchUp();
        // Asked for a write not visible here yet (its commit still landing): look again shortly.
        else if (seq < wanted) setTimeout(catchUp, 2);
      },
      (err: Error) => {
        catching = false;
        // The primary kills a worker that does not answer; a worker that cannot apply must not serve stale data either.
        log.error({ err: err.message }, 'applying another worker\'s write failed; exiting so that the primary restarts this worker');
        process.exit(1);
      },
    );
  };

  process.on('message', (m: unknown) => {
    if (!isFunnelMessage(m)) return;
    const msg = m as PrimaryMessage;
    switch (msg.funnel) {
      case 'listen':
        listenPort = msg.port;
        onListen?.(msg.port);
        break;
      case 'catchup':
        wanted = Math.max(wanted, msg.seq);
        catchUp();
        break;
      case 'caught': {
        const a = acks.get(msg.id);
        acks.delete(msg.id);
        a?.resolve();
        break;
      }
      case 'reload':
        void running?.reloadConfig().then((o) => {
          if (o.result === 'unchanged') log.info({}, 'SIGHUP: config unchanged');
        });
        break;
      case 'floor':
        floor = msg.seq;
        break;
    }
  });
  // The primary is gone (killed): nothing restarts or coordinates this worker any more.
  const orphaned = () => {
    log.error({ worker: index }, 'the primary is gone; exiting');
    for (const a of acks.values()) a.reject(new Error('the primary process is gone'));
    process.exit(1);
  };
  process.on('disconnect', orphaned);
  // And the kernel's guarantee, for a worker whose event loop is stuck when the primary dies
  // (its 'disconnect' would never run): it is killed with its primary.
  setParentDeathSignal();
  if (!process.connected) orphaned();

  const loaded = (s: ServingState) => {
    state = s;
    send({ funnel: 'loaded', applied: s.appliedSeq });
    if (wantCatchUp) catchUp();
  };

  return {
    index,
    early,
    stateOptions: { checkpoints: index === 0, journalFloor: () => floor },
    bindLate: early
      ? undefined
      : (s) => {
          loaded(s);
          return new Promise<number>((resolve) => {
            if (listenPort !== null) resolve(listenPort);
            else onListen = resolve;
          });
        },
    attach(r: Running) {
      running = r;
      if (early) loaded(r.state);
      r.state.onWrite = (seq) =>
        new Promise<void>((resolve, reject) => {
          const id = nextId++;
          acks.set(id, { resolve, reject });
          send({ funnel: 'wrote', id, seq });
        });
      AggregatorRegistry.setRegistries([r.metrics.registry]);
      // Constructing one installs prom-client's answer to the primary's metrics requests.
      new AggregatorRegistry();
      send({ funnel: 'ready', port: r.port, ads: r.state.ads.size, dim: r.state.dim, seq: r.state.appliedSeq });
    },
    leave() {
      process.removeListener('disconnect', orphaned);
      if (process.connected) process.disconnect();
    },
  };
}
