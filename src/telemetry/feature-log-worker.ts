/**
 * The writer thread of FeatureLog: formats each request's batch as JSON lines (formatBatch) and
 * appends them with RotatingLog, the request log's writer (rotation, pruning, bounded queue,
 * drop counting). Counts and warnings go back to the main thread, which owns the metrics and
 * the logger; `flush` and `close` are answered once every batch before them is written or dropped.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { formatBatch, type FeatureWorkerInit, type FromFeatureWorker, type ToFeatureWorker } from './feature-log';
import { RotatingLog } from './rotating-log';

function run(port: NonNullable<typeof parentPort>, init: FeatureWorkerInit): void {
  const post = (m: FromFeatureWorker) => port.postMessage(m);
  const log = new RotatingLog({
    dir: init.dir,
    prefix: 'features',
    name: 'feature log',
    maxFileBytes: init.maxFileBytes,
    maxFiles: init.maxFiles,
    maxQueueBytes: init.maxQueueBytes,
    logger: { warn: (obj, msg) => post({ type: 'warn', obj, msg }) },
    onCount: (result, n) => post({ type: 'count', result, n, files: log.stats().files }),
  });
  port.on('message', (m: ToFeatureWorker) => {
    if (m.type === 'batch') {
      const n = m.batch.adIds.length;
      let text: string;
      try {
        text = formatBatch(m.batch);
      } catch (err) {
        log.drop(n);
        log.warn('format', { dir: init.dir, err: (err as Error)?.message ?? String(err) }, 'feature log: rows could not be formatted; dropped');
        return;
      }
      log.push(text, n);
      return;
    }
    const done = () => post({ type: 'done', id: m.id });
    (m.type === 'flush' ? log.flush() : log.close()).then(done, done);
  });
}

if (parentPort) run(parentPort, workerData as FeatureWorkerInit);
