/**
 * Messages between the primary of `funnel serve --workers N` and its worker processes (over the
 * node:cluster IPC channel). Every worker serves the same data directory; a write lands in LMDB
 * through whichever worker took the Admin call, and the others re-read what it touched (the
 * store's journal) before the call is answered.
 *
 *   worker                                   primary
 *   loaded {applied}             ------->    member from now on; catches it up to every
 *                                            write already acknowledged, then
 *                                <-------    listen {port}
 *   ready {port}                 ------->    (banner once every first-generation worker is ready)
 *   wrote {id, seq}              ------->    catchup {seq} to every other member
 *                                <-------    caught {id} once every member applied seq
 *   applied {seq}                ------->    (answers to catchup)
 *                                <-------    reload (SIGHUP), floor {seq} (journal prune point)
 */

/** Worker to primary. */
export type WorkerMessage =
  | { funnel: 'loaded'; applied: number }
  | { funnel: 'ready'; port: number; ads: number; dim: number | null; seq: number }
  | { funnel: 'wrote'; id: number; seq: number }
  | { funnel: 'applied'; seq: number }
  | { funnel: 'failed'; error: string };

/** Primary to worker. */
export type PrimaryMessage =
  | { funnel: 'listen'; port: number }
  | { funnel: 'catchup'; seq: number }
  | { funnel: 'caught'; id: number }
  | { funnel: 'reload' }
  | { funnel: 'floor'; seq: number };

/** Environment variables the primary hands each worker. */
export const ENV = {
  /** The worker's slot, 0..N-1; slot 0 writes ANN checkpoints. */
  index: 'FUNNEL_WORKER_INDEX',
  /** `early`: bind the port before loading (health NOT_SERVING meanwhile): only the first worker at start-up. */
  bind: 'FUNNEL_WORKER_BIND',
} as const;

/** True when `m` is one of ours (other modules, e.g. prom-client, share the channel). */
export function isFunnelMessage(m: unknown): m is { funnel: string } {
  return typeof m === 'object' && m !== null && typeof (m as { funnel?: unknown }).funnel === 'string';
}
