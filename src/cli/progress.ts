/**
 * Progress for long commands: a cli-progress bar with rate and ETA on a terminal, plain lines
 * every few seconds otherwise (logs, CI), on stderr so stdout stays machine-readable.
 */
import { SingleBar, Presets } from 'cli-progress';

/** One phase's progress reporter. */
export interface Progress {
  update(done: number, total: number, rows?: number): void;
  stop(): void;
}

const PLAIN_EVERY_MS = 5000;

/** A reporter for `label` (e.g. "read", "index"); `unit` names what `done` counts. */
export function progress(label: string, unit: string, stream: NodeJS.WriteStream = process.stderr): Progress {
  const started = Date.now();
  if (stream.isTTY) {
    const bar = new SingleBar(
      {
        stream,
        format: `${label.padEnd(6)} [{bar}] {percentage}% | {value}/{total} ${unit} | {rate}/s | ETA {eta_formatted}`,
        hideCursor: true,
        etaBuffer: 50,
      },
      Presets.shades_classic,
    );
    let startedBar = false;
    return {
      update(done, total, rows) {
        const rate = Math.round((rows ?? done) / Math.max(1e-3, (Date.now() - started) / 1000));
        if (!startedBar) {
          bar.start(total, done, { rate });
          startedBar = true;
        } else {
          bar.setTotal(total);
          bar.update(done, { rate });
        }
      },
      stop() {
        if (startedBar) bar.stop();
      },
    };
  }
  let last = 0;
  return {
    update(done, total, rows) {
      const now = Date.now();
      if (now - last < PLAIN_EVERY_MS && done < total) return;
      last = now;
      const secs = Math.max(1e-3, (now - started) / 1000);
      const rate = (rows ?? done) / secs;
      const eta = done > 0 && done < total ? ` ETA ${Math.round(((total - done) / done) * secs)}s` : '';
      const pct = total > 0 ? ((100 * done) / total).toFixed(1) : '100.0';
      stream.write(`${label}: ${pct}% (${rows ?? done} ${rows === undefined ? unit : 'rows'}, ${Math.round(rate)}/s)${eta}\n`);
    },
    stop() {},
  };
}
