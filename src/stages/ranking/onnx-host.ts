/**
 * ONNX pCTR models, run off the request thread: one worker thread per role (`serve` for the
 * EarlyRanker's model, `shadow` for shadow models, so a shadow run never queues ahead of a
 * serving one) owns the onnxruntime sessions (onnx-worker.ts). A model is read, validated and
 * loaded once per config load: synchronously while a config is parsed at start (the caller
 * blocks on the worker's answer), asynchronously on hot reload, so serving goes on meanwhile.
 * Loads of the same file (same bytes, features and names) share one session; a session is
 * released once no config refers to its model any more.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'node:worker_threads';
import type { OnnxModelConfig, RankerFeatureName } from '../../config/schema';

/** Which worker runs a model: `serve` answers requests, `shadow` only measures. */
export type ModelRole = 'serve' | 'shadow';

/** What a worker thread starts with: the flag and port of synchronous loads. */
export interface WorkerData {
  flag: Int32Array;
  syncPort: MessagePort;
}

/** A validated model's signature, as the worker found it. */
export interface ModelInfo {
  input: string;
  output: string;
  inputShape: string;
  outputShape: string;
}

/** Host to worker: load (and validate) a model's bytes under `key`. */
export interface LoadRequest {
  op: 'load';
  id: number;
  key: number;
  bytes: ArrayBuffer;
  features: RankerFeatureName[];
  input: string | null;
  output: string | null;
  threads: number;
  /** Answer on the synchronous port (the caller is blocked on the flag). */
  sync: boolean;
}
/** Host to worker: score `n` rows (row-major, one column per feature). */
export interface RunRequest {
  op: 'run';
  id: number;
  key: number;
  rows: Float32Array;
  n: number;
}
/** Host to worker: drop a session. */
export interface ReleaseRequest {
  op: 'release';
  key: number;
}
/** What the host sends its worker. */
export type HostRequest = LoadRequest | RunRequest | ReleaseRequest;
/** Worker to host: a load's outcome (info, or why the model is refused), or a run's pCTRs (one per row) or error. */
export type HostReply = { op: 'loaded'; id: number; info?: ModelInfo; error?: string } | { op: 'ran'; id: number; out?: Float32Array; error?: string };

/** Longest a model load (validation and probe included) may take. */
export const LOAD_TIMEOUT_MS = 60_000;

/** How long a model that failed to load on first use (a config built without src/config/load.ts) is not tried again. */
const RETRY_LOAD_MS = 5_000;

/** Runs one worker accepts at a time; more are refused at once (the request falls back): a slow model must not queue requests without bound. */
export const MAX_QUEUED_RUNS = 64;

/** Why a model gave no scores; `reason` is a short code (the stage's `fallback` note). */
export class ModelRunError extends Error {
  constructor(
    readonly reason: 'queue_full' | 'error' | 'not_loaded',
    message: string,
  ) {
    super(message);
  }
}

/** A model loaded (or to be loaded again) in its role's worker. */
export class OnnxModel {
  /** Generation of the worker holding its session (-1: none yet). */
  loadedIn = -1;
  /** A load in progress after the worker was restarted. */
  reloading: Promise<void> | undefined;

  constructor(
    readonly key: number,
    readonly role: ModelRole,
    /** Absolute path of the file. */
    readonly file: string,
    /** SHA-256 of the bytes validated. */
    readonly sha256: string,
    readonly features: readonly RankerFeatureName[],
    readonly input: string | null,
    readonly output: string | null,
    readonly threads: number,
    public info: ModelInfo | undefined = undefined,
  ) {}
}

/** One worker thread and its calls. */
class ModelHost {
  private worker: Worker | undefined;
  private syncPort: MessagePort | undefined;
  private readonly flag = new Int32Array(new SharedArrayBuffer(4));
  private readonly calls = new Map<number, { resolve: (r: HostReply) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  /** Generation of the live worker (a new worker after a crash gets the next one). */
  generation = 0;
  /** Runs sent and not answered. */
  queued = 0;

  constructor(readonly role: ModelRole) {}

  /** The live worker, started when there is none. */
  private start(): Worker {
    if (this.worker) return this.worker;
    const { port1, port2 } = new MessageChannel();
    const data: WorkerData = { flag: this.flag, syncPort: port2 };
    const w = new Worker(path.join(__dirname, 'onnx-worker.js'), { workerData: data, transferList: [port2], name: `funnel-model-${this.role}` });
    port1.unref();
    this.generation++;
    w.on('message', (r: HostReply) => {
      const c = this.calls.get(r.id);
      if (!c) return;
      this.calls.delete(r.id);
      this.refresh();
      c.resolve(r);
    });
    w.on('error', (err) => this.down(w, new Error(`the ${this.role} model worker failed: ${err.message}`)));
    w.on('exit', (code) => this.down(w, new Error(`the ${this.role} model worker exited (code ${code})`)));
    // Only pending calls keep the process alive (refresh()); after the listeners, which ref it.
    w.unref();
    this.worker = w;
    this.syncPort = port1;
    return w;
  }

  /** Forgets worker `w` (gone or stopped) and fails its pending calls; the next use starts another. */
  private down(w: Worker, err: Error): void {
    if (this.worker !== w) return;
    this.worker = undefined;
    this.syncPort?.close();
    this.syncPort = undefined;
    const calls = [...this.calls.values()];
    this.calls.clear();
    for (const c of calls) c.reject(err);
  }

  private refresh(): void {
    if (!this.worker) return;
    if (this.calls.size > 0) this.worker.ref();
    else this.worker.unref();
  }

  /** Sends `m` and resolves with its answer; rejects after `timeoutMs` or when the worker dies. */
  private call(m: Omit<LoadRequest, 'id'> | Omit<RunRequest, 'id'>, transfer: ArrayBuffer[], timeoutMs: number): Promise<HostReply> {
    const w = this.start();
    const id = this.nextId++;
    return new Promise<HostReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.calls.delete(id);
        this.refresh();
        reject(new Error(`no answer from the model worker within ${timeoutMs} ms`));
      }, timeoutMs);
      timer.unref();
      this.calls.set(id, {
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.refresh();
      w.postMessage({ ...m, id }, transfer);
    });
  }

  private loadRequest(model: OnnxModel, bytes: ArrayBuffer, sync: boolean): Omit<LoadRequest, 'id'> {
    return { op: 'load', key: model.key, bytes, features: [...model.features], input: model.input, output: model.output, threads: model.threads, sync };
  }

  /** Loads `model` from `bytes` (transferred), blocking the calling thread until the worker has validated it; throws the refusal. */
  loadSync(model: OnnxModel, bytes: ArrayBuffer): void {
    const w = this.start();
    const port = this.syncPort!;
    const id = this.nextId++;
    const generation = this.generation;
    // Answers of earlier loads that gave up waiting are skipped by id.
    const take = (): HostReply | undefined => {
      for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port)) {
        if ((m.message as HostReply).id === id) return m.message as HostReply;
      }
      return undefined;
    };
    Atomics.store(this.flag, 0, 0);
    w.postMessage({ ...this.loadRequest(model, bytes, true), id }, [bytes]);
    const deadline = Date.now() + LOAD_TIMEOUT_MS;
    let reply: HostReply | undefined;
    for (;;) {
      reply = take();
      if (reply !== undefined) break;
      const left = deadline - Date.now();
      if (left <= 0 || this.worker !== w) break;
      Atomics.wait(this.flag, 0, 0, Math.min(left, 1000));
      Atomics.store(this.flag, 0, 0);
    }
    // receiveMessageOnPort() refs the port again; it must not keep the process alive.
    port.unref();
    if (reply === undefined) throw new Error(this.worker !== w ? 'the model worker stopped while loading it' : `loading took longer than ${LOAD_TIMEOUT_MS / 1000} s`);
    this.accept(model, reply, generation);
  }

  /** Loads `model` from `bytes` (transferred) without blocking; rejects with the refusal. */
  async load(model: OnnxModel, bytes: ArrayBuffer): Promise<void> {
    this.start();
    const generation = this.generation;
    const reply = await this.call(this.loadRequest(model, bytes, false), [bytes], LOAD_TIMEOUT_MS);
    this.accept(model, reply, generation);
  }

  private accept(model: OnnxModel, reply: HostReply, generation: number): void {
    if (reply.op !== 'loaded') throw new Error('the model worker answered out of turn');
    if (reply.error !== undefined) throw new Error(reply.error);
    model.info = reply.info;
    model.loadedIn = generation;
  }

  /** Whether `model`'s session lives in the current worker. */
  holds(model: OnnxModel): boolean {
    return this.worker !== undefined && model.loadedIn === this.generation;
  }

  /** pCTRs of `n` rows (transferred); loads the model again first when its worker was restarted. Rejects with a ModelRunError. */
  async run(model: OnnxModel, rows: Float32Array, n: number, timeoutMs: number): Promise<Float32Array> {
    if (this.queued >= MAX_QUEUED_RUNS) throw new ModelRunError('queue_full', `${this.queued} runs already wait for the ${this.role} model worker`);
    this.queued++;
    try {
      if (!this.holds(model)) {
        model.reloading ??= reloadFromDisk(model).finally(() => {
          model.reloading = undefined;
        });
        try {
          await model.reloading;
        } catch (err) {
          throw new ModelRunError('not_loaded', `cannot load the model again: ${(err as Error).message}`);
        }
      }
      let reply: HostReply;
      try {
        reply = await this.call({ op: 'run', key: model.key, rows, n }, [rows.buffer as ArrayBuffer], Math.max(timeoutMs, 1000));
      } catch (err) {
        throw new ModelRunError('error', (err as Error).message);
      }
      if (reply.op !== 'ran' || reply.out === undefined) throw new ModelRunError('error', reply.error ?? 'no output');
      return reply.out;
    } finally {
      this.queued--;
    }
  }

  /** Drops `key`'s session (its model is no longer referenced). */
  release(key: number): void {
    const req: ReleaseRequest = { op: 'release', key };
    this.worker?.postMessage(req);
  }

  /** Stops the worker (tests, benches); the next use starts another. */
  async stop(): Promise<void> {
    const w = this.worker;
    if (!w) return;
    this.down(w, new Error(`the ${this.role} model worker was stopped`));
    await w.terminate();
  }
}

const hosts: Record<ModelRole, ModelHost> = { serve: new ModelHost('serve'), shadow: new ModelHost('shadow') };

/** The model validated for each config block (the block object of the parsed config). */
const byConfig = new WeakMap<object, OnnxModel | Promise<OnnxModel>>();
/** Models by content (role, file, bytes, features, names, threads), so reloads of an unchanged model reuse its session. */
const byContent = new Map<string, WeakRef<OnnxModel>>();
const released = new FinalizationRegistry<{ role: ModelRole; key: number; content: string }>((h) => {
  hosts[h.role].release(h.key);
  if (byContent.get(h.content)?.deref() === undefined) byContent.delete(h.content);
});
let nextKey = 1;

function fileOf(cfg: OnnxModelConfig): string {
  return path.resolve(cfg.path);
}

function contentKey(role: ModelRole, file: string, sha: string, cfg: OnnxModelConfig): string {
  return JSON.stringify([role, file, sha, cfg.features, cfg.input, cfg.output, cfg.threads]);
}

/** A copy of `b` in an ArrayBuffer of its own (transferable). */
function ownBuffer(b: Uint8Array): ArrayBuffer {
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
}

function sha256(b: Uint8Array): string {
  return crypto.createHash('sha256').update(b).digest('hex');
}

function cannotRead(file: string, err: unknown): Error {
  return new Error(`cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
}

/** The shared model for these bytes, or a new (unloaded) one registered under them. */
function modelOf(cfg: OnnxModelConfig, role: ModelRole, file: string, bytes: Uint8Array): { model: OnnxModel; fresh: boolean } {
  const sha = sha256(bytes);
  const content = contentKey(role, file, sha, cfg);
  const existing = byContent.get(content)?.deref();
  if (existing) return { model: existing, fresh: false };
  const model = new OnnxModel(nextKey++, role, file, sha, cfg.features, cfg.input, cfg.output, cfg.threads);
  byContent.set(content, new WeakRef(model));
  released.register(model, { role, key: model.key, content });
  return { model, fresh: true };
}

/** Loads the model of `cfg` for `role` (or finds it loaded), blocking until the worker has validated it: what a config load at start does. Throws an Error saying what is wrong. */
export function loadModelSync(cfg: OnnxModelConfig, role: ModelRole): OnnxModel {
  const hit = byConfig.get(cfg);
  if (hit instanceof OnnxModel && hosts[role].holds(hit)) return hit;
  const file = fileOf(cfg);
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (err) {
    throw cannotRead(file, err);
  }
  const { model } = modelOf(cfg, role, file, bytes);
  if (!hosts[role].holds(model)) hosts[role].loadSync(model, ownBuffer(bytes));
  byConfig.set(cfg, model);
  return model;
}

/** Loads the model of `cfg` for `role` (or finds it loaded) without blocking: what a hot reload does. Rejects with an Error saying what is wrong. */
export async function loadModel(cfg: OnnxModelConfig, role: ModelRole): Promise<OnnxModel> {
  const hit = byConfig.get(cfg);
  if (hit instanceof OnnxModel && hosts[role].holds(hit)) return hit;
  const file = fileOf(cfg);
  let bytes: Buffer;
  try {
    bytes = await fs.promises.readFile(file);
  } catch (err) {
    throw cannotRead(file, err);
  }
  const { model } = modelOf(cfg, role, file, bytes);
  if (!hosts[role].holds(model)) await hosts[role].load(model, ownBuffer(bytes));
  byConfig.set(cfg, model);
  return model;
}

/** Reads `model`'s file again into a restarted worker; refuses a file whose bytes changed since it was validated. */
async function reloadFromDisk(model: OnnxModel): Promise<void> {
  const bytes = await fs.promises.readFile(model.file).catch((err: unknown) => {
    throw cannotRead(model.file, err);
  });
  if (sha256(bytes) !== model.sha256) throw new Error(`${model.file} changed since the config was loaded; reload the config to use it`);
  await hosts[model.role].load(model, ownBuffer(bytes));
}

/** The model serving `cfg`: the one its config load validated, else a load started now (a config built without src/config/load.ts). */
export function modelFor(cfg: OnnxModelConfig, role: ModelRole): OnnxModel | Promise<OnnxModel> {
  const hit = byConfig.get(cfg);
  if (hit !== undefined) return hit;
  const p = loadModel(cfg, role);
  byConfig.set(cfg, p);
  // A failed load is tried again RETRY_LOAD_MS later (the file may be fixed by then), not by
  // every request meanwhile.
  p.catch(() => {
    setTimeout(() => {
      if (byConfig.get(cfg) === p) byConfig.delete(cfg);
    }, RETRY_LOAD_MS).unref();
  });
  return p;
}

/** pCTR per row of `rows` (n rows of model.features.length columns; the buffer is transferred). Rejects with a ModelRunError. */
export function runModel(model: OnnxModel, rows: Float32Array, n: number, timeoutMs: number): Promise<Float32Array> {
  return hosts[model.role].run(model, rows, n, timeoutMs);
}

/** Runs waiting in `role`'s worker. */
export function queuedRuns(role: ModelRole): number {
  return hosts[role].queued;
}

/** Stops both model workers (tests and benches; serving processes just exit). Models load again on their next use. */
export async function stopModelWorkers(): Promise<void> {
  await Promise.all([hosts.serve.stop(), hosts.shadow.stop()]);
}
