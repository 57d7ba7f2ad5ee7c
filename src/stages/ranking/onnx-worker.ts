/**
 * The model worker thread (onnx-host.ts starts one per role): it owns the onnxruntime sessions,
 * validates a model before it serves (input and output names, types and shapes, and a probe
 * batch whose pCTRs must be finite and in [0, 1]) and runs batches. onnxruntime-node's
 * `session.run` computes on the thread that calls it (1.30 wraps a synchronous native call in
 * setImmediate), which is why it is called here and never on the request thread.
 */
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import type * as ort from 'onnxruntime-node';
import type { HostReply, HostRequest, LoadRequest, ModelInfo, WorkerData } from './onnx-host';

type Loaded = { session: ort.InferenceSession; input: string; output: string; width: number };

let runtime: typeof ort | undefined;
/** onnxruntime-node, required on first use: a failure to load it is a load's answer, not a dead worker the host would wait on. */
function onnxruntime(): typeof ort {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    runtime ??= require('onnxruntime-node') as typeof ort;
  } catch (err) {
    throw new Error(`onnxruntime-node cannot be loaded: ${firstLine(err)}`);
  }
  return runtime;
}

const sessions = new Map<number, Loaded>();
const { flag, syncPort } = workerData as WorkerData & { syncPort: MessagePort };

/** Plausible range of each feature for the probe batch: [low, high], or null for a 0/1 indicator. */
const PROBE_RANGE: Record<string, [number, number] | null> = {
  // -L2 similarities are unbounded below; dot products of raw embeddings exceed 1.
  ann_similarity: [-4, 2],
  // The logit of ctr_prior clamped to [1e-4, 1 - 1e-4].
  ctr_prior_logit: [-9.2102, 9.2102],
  popularity_rate: [0, 1],
  quality: [0, 1],
  source_ann: null,
  source_targeting: null,
  source_popularity: null,
};

/** Probe rows for `features`: the lows, the highs, then deterministic points spread over the ranges (golden-ratio steps). */
function probeRows(features: readonly string[], rows: number): Float32Array {
  const w = features.length;
  const out = new Float32Array(rows * w);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < w; j++) {
      const range = PROBE_RANGE[features[j]] ?? [0, 1];
      let t: number;
      if (r === 0) t = 0;
      else if (r === 1) t = 1;
      else t = ((r * 0.6180339887498949 + j * 0.4142135623730951) % 1 + 1) % 1;
      out[r * w + j] = range === null ? (t >= 0.5 ? 1 : 0) : range[0] + t * (range[1] - range[0]);
    }
  }
  return out;
}

const fmtShape = (shape: ReadonlyArray<number | string>) => `[${shape.map((d) => (typeof d === 'string' ? d || '?' : String(d))).join(', ')}]`;
const isDynamic = (d: number | string | undefined) => typeof d === 'string';

function tensorMeta(m: ort.InferenceSession.ValueMetadata): { type: string; shape: ReadonlyArray<number | string> } | null {
  return m.isTensor ? { type: m.type, shape: m.shape } : null;
}

/** Checks the session's signature against the contract; returns the input and output names, or throws the refusal. */
function checkSignature(session: ort.InferenceSession, m: LoadRequest): { input: string; output: string; info: ModelInfo } {
  const width = m.features.length;
  const inputs = session.inputNames;
  let input: string;
  if (m.input !== null) {
    if (!inputs.includes(m.input)) throw new Error(`the model has no input named "${m.input}" (its inputs: ${inputs.map((n) => `"${n}"`).join(', ')})`);
    if (inputs.length !== 1) throw new Error(`the model has ${inputs.length} inputs (${inputs.join(', ')}); it must have one`);
    input = m.input;
  } else {
    if (inputs.length !== 1) throw new Error(`the model has ${inputs.length} inputs (${inputs.join(', ')}); it must have one`);
    input = inputs[0];
  }
  const inMeta = tensorMeta(session.inputMetadata[inputs.indexOf(input)]);
  if (inMeta === null) throw new Error(`input "${input}" is not a tensor`);
  if (inMeta.type !== 'float32') throw new Error(`input "${input}" is ${inMeta.type}; it must be float32`);
  const s = inMeta.shape;
  if (s.length !== 2 || !isDynamic(s[0]) || (!isDynamic(s[1]) && s[1] !== width)) {
    const why =
      s.length !== 2
        ? `it must be 2-dimensional, [batch, ${width}]`
        : !isDynamic(s[0])
          ? `its first dimension must be the batch (dynamic), not ${String(s[0])}`
          : `its second dimension must be ${width}, the number of features the config lists (${m.features.join(', ')})`;
    throw new Error(`input "${input}" has shape ${fmtShape(s)}: ${why}`);
  }
  const outputs = session.outputNames;
  let output: string;
  if (m.output !== null) {
    if (!outputs.includes(m.output)) throw new Error(`the model has no output named "${m.output}" (its outputs: ${outputs.map((n) => `"${n}"`).join(', ')})`);
    output = m.output;
  } else {
    if (outputs.length !== 1) throw new Error(`the model has ${outputs.length} outputs (${outputs.join(', ')}); name the pCTR one in \`output\``);
    output = outputs[0];
  }
  const outMeta = tensorMeta(session.outputMetadata[outputs.indexOf(output)]);
  if (outMeta === null) throw new Error(`output "${output}" is not a tensor`);
  if (outMeta.type !== 'float32') throw new Error(`output "${output}" is ${outMeta.type}; it must be float32`);
  const o = outMeta.shape;
  // A model whose output shape onnxruntime cannot infer (empty) is left to the probe.
  if (o.length > 0 && !((o.length === 1 || (o.length === 2 && (o[1] === 1 || isDynamic(o[1])))) && isDynamic(o[0]))) {
    throw new Error(`output "${output}" has shape ${fmtShape(o)}; it must be [batch] or [batch, 1]`);
  }
  return { input, output, info: { input, output, inputShape: fmtShape(s), outputShape: fmtShape(o) } };
}

/** Runs `rows` (n x width) and returns one pCTR per row; throws when the output has another size. */
async function infer(l: Loaded, rows: Float32Array, n: number): Promise<Float32Array> {
  const out = await l.session.run({ [l.input]: new (onnxruntime().Tensor)('float32', rows, [n, l.width]) }, [l.output]);
  const t = out[l.output];
  const dims = t.dims;
  if (t.type !== 'float32' || !((dims.length === 1 && dims[0] === n) || (dims.length === 2 && dims[0] === n && dims[1] === 1))) {
    throw new Error(`output "${l.output}" came back as ${t.type} ${fmtShape(dims as number[])} for a batch of ${n}; it must be float32 [${n}] or [${n}, 1]`);
  }
  // A copy in a buffer of its own: transferable, and not a view of memory onnxruntime owns.
  return Float32Array.from(t.data as Float32Array);
}

/** Loads and validates one model; the session serves only when every check passed. */
async function load(m: LoadRequest): Promise<ModelInfo> {
  const rt = onnxruntime();
  let session: ort.InferenceSession;
  try {
    session = await rt.InferenceSession.create(new Uint8Array(m.bytes), {
      intraOpNumThreads: m.threads,
      interOpNumThreads: 1,
      executionMode: 'sequential',
      graphOptimizationLevel: 'all',
    });
  } catch (err) {
    throw new Error(`onnxruntime cannot load it: ${firstLine(err)}`);
  }
  try {
    const { input, output, info } = checkSignature(session, m);
    const loaded: Loaded = { session, input, output, width: m.features.length };
    for (const rows of [1, 16]) {
      let p: Float32Array;
      try {
        p = await infer(loaded, probeRows(m.features, rows), rows);
      } catch (err) {
        throw new Error(`a probe batch of ${rows} row(s) failed: ${firstLine(err)}`);
      }
      for (let i = 0; i < p.length; i++) {
        if (!(p[i] >= 0 && p[i] <= 1)) throw new Error(`on a probe batch of ${rows} row(s) the model gave ${p[i]} at row ${i}: pCTR must be finite and in [0, 1]`);
      }
    }
    sessions.get(m.key)?.session.release().catch(() => undefined);
    sessions.set(m.key, loaded);
    return info;
  } catch (err) {
    await session.release().catch(() => undefined);
    throw err;
  }
}

function firstLine(err: unknown): string {
  return String((err as Error)?.message ?? err).split('\n')[0].trim();
}

async function handle(m: HostRequest): Promise<HostReply | null> {
  switch (m.op) {
    case 'load':
      try {
        return { op: 'loaded', id: m.id, info: await load(m) };
      } catch (err) {
        return { op: 'loaded', id: m.id, error: (err as Error).message };
      }
    case 'run': {
      const l = sessions.get(m.key);
      if (!l) return { op: 'ran', id: m.id, error: 'the model is not loaded in this worker' };
      try {
        const out = await infer(l, m.rows, m.n);
        return { op: 'ran', id: m.id, out };
      } catch (err) {
        return { op: 'ran', id: m.id, error: firstLine(err) };
      }
    }
    case 'release': {
      const l = sessions.get(m.key);
      sessions.delete(m.key);
      await l?.session.release().catch(() => undefined);
      return null;
    }
  }
}

parentPort!.on('message', (m: HostRequest) => {
  void handle(m).then((reply) => {
    if (reply === null) return;
    if (m.op === 'load' && m.sync) {
      syncPort.postMessage(reply);
      Atomics.store(flag, 0, 1);
      Atomics.notify(flag, 0);
    } else if (reply.op === 'ran' && reply.out) parentPort!.postMessage(reply, [reply.out.buffer as ArrayBuffer]);
    else parentPort!.postMessage(reply);
  });
});
