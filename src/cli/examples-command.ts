/**
 * `funnel examples --log DIR --events FILE --out FILE`: labelled training examples from a feature
 * log (`funnel serve --feature-log DIR`) and an events file (JSON Lines of RecordEvents-style
 * events with the Retrieve's request_id), joined on (request_id, ad_id) by src/eval/examples.ts.
 * Writes one example per line (`--out -`: stdout; a file is written beside itself and renamed
 * once complete); says on stderr what it left out and why. Bad lines: `FILE:LINE: reason` on
 * stderr, skipped and counted. Exit 0; 1 when a line was bad; 2 bad usage; 3 I/O.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ExampleJoin, readEventLine, type JoinCounts } from '../eval/examples';
import { featureLogFiles, readFeatureLog, readJsonLines, type FileRange } from '../telemetry/feature-log';
import { progress, type Progress } from './progress';

/** Options as commander parses them. */
export interface ExamplesCommandOptions {
  /** A feature-log directory (its `features-*.jsonl`), or one file. */
  log: string;
  events: string;
  /** Output file; `-` = stdout. */
  out: string;
}

/** Bad lines printed before the rest are only counted. */
const MAX_REPORTED = 100;
/** Inputs at least this large (bytes, log and events together) get progress on stderr. */
const PROGRESS_BYTES = 16 * 1024 * 1024;

class IoError extends Error {}

/** Reports each phase's bytes read (big inputs only). */
class Phases {
  private current: Progress | null = null;
  private doneBefore = 0;
  constructor(private readonly enabled: boolean) {}
  start(label: string, total: number): (file: string, bytes: number) => void {
    this.current?.stop();
    this.current = this.enabled ? progress(label, 'bytes') : null;
    this.doneBefore = 0;
    let file = '';
    let last = 0;
    return (f, bytes) => {
      if (f !== file) {
        this.doneBefore += last;
        file = f;
      }
      last = bytes;
      this.current?.update(Math.min(total, this.doneBefore + bytes), total);
    };
  }
  stop(): void {
    this.current?.stop();
    this.current = null;
  }
}

/** A buffered writer to a stream that honours back-pressure and turns a write error into an IoError. */
class Output {
  private buf = '';
  private failed: Error | null = null;
  constructor(private readonly stream: NodeJS.WritableStream) {
    stream.on('error', (err: Error) => (this.failed ??= err));
  }
  async write(text: string): Promise<void> {
    this.buf += text;
    if (this.buf.length >= 1 << 20) await this.flush();
  }
  async flush(): Promise<void> {
    this.check();
    const b = this.buf;
    this.buf = '';
    if (b !== '' && !this.stream.write(b)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.stream.off('drain', done);
          this.stream.off('error', done);
          resolve();
        };
        this.stream.on('drain', done);
        this.stream.on('error', done);
      });
    }
    this.check();
  }
  private check(): void {
    if (this.failed) throw new IoError(`writing failed: ${this.failed.message}`);
  }
}

function summary(c: JoinCounts, bad: { log: number; events: number }): string {
  const lines = [
    `funnel examples: ${c.examples} examples (${c.positives} clicked, label 1) from ${c.rows} feature-log rows`,
    `  left out: ${c.notShown} rows never shown (no impression); ${c.clickedNotShown} rows clicked without an impression; ` +
      `${c.duplicateRows} rows sharing their (request_id, ad_id) with another row`,
    `  events: ${c.events} read, ${c.eventsJoined} joined; ${c.eventsUnknownRequest} of requests not in the log; ` +
      `${c.eventsUnloggedAd} of ads not logged for their request; ${c.eventsNoRequestId} without request_id; ${c.duplicateEvents} duplicates counted once`,
  ];
  if (bad.log + bad.events > 0) lines.push(`  bad lines skipped: ${bad.log} in the feature log, ${bad.events} in the events file`);
  return lines.join('\n') + '\n';
}

/** Runs the join; resolves to the exit code. */
export async function runExamples(opts: ExamplesCommandOptions, stderr: NodeJS.WritableStream = process.stderr, stdout: NodeJS.WritableStream = process.stdout): Promise<number> {
  const say = (s: string) => stderr.write(s);
  if (opts.out !== '-' && path.resolve(opts.out) === path.resolve(opts.events)) {
    say('funnel examples: --out must not be the --events file\n');
    return 2;
  }
  let files: FileRange[];
  let eventsSize: number;
  try {
    files = await featureLogFiles(opts.log);
  } catch (err) {
    say(`funnel examples: --log ${opts.log}: ${(err as Error).message}\n`);
    return 3;
  }
  if (files.length === 0) {
    say(`funnel examples: --log ${opts.log}: no feature-log files (features-*.jsonl) in the directory\n`);
    return 3;
  }
  try {
    const st = await fs.promises.stat(opts.events);
    if (st.isDirectory()) throw new Error('is a directory');
    eventsSize = st.size;
  } catch (err) {
    say(`funnel examples: --events ${opts.events}: ${(err as Error).message}\n`);
    return 3;
  }
  const logBytes = files.reduce((n, f) => n + (f.size ?? 0), 0);
  const phases = new Phases(2 * logBytes + eventsSize >= PROGRESS_BYTES);
  const bad = { log: 0, events: 0 };
  const reportBad = (which: 'log' | 'events', file: string, line: number, reason: string) => {
    bad[which]++;
    const n = bad.log + bad.events;
    if (n <= MAX_REPORTED) say(`${file}:${line}: ${reason}\n`);
    else if (n === MAX_REPORTED + 1) say(`(more bad lines are only counted)\n`);
  };
  const join = new ExampleJoin();
  const tmp = opts.out === '-' ? null : `${opts.out}.tmp-${process.pid}`;
  let fileStream: fs.WriteStream | null = null;
  try {
    // Pass 1: the keys of the log.
    let onBytes = phases.start('log', logBytes);
    for await (const l of readFeatureLog(files, onBytes)) {
      if (l.io) throw new IoError(`${l.file}: ${l.error}`);
      if (l.error !== undefined) reportBad('log', l.file, l.line, l.error);
      else join.addRow(l.row!);
    }
    // Pass 2: the events, counted on the rows they name.
    onBytes = phases.start('events', eventsSize);
    for await (const l of readJsonLines([{ file: opts.events }], onBytes)) {
      if (l.io) throw new IoError(`${l.file}: ${l.error}`);
      const r = l.error !== undefined ? { error: l.error } : readEventLine(l.value);
      if (r.error !== undefined) reportBad('events', l.file, l.line, r.error);
      else join.addEvent(r.event!);
    }
    // Pass 3: the log again (the same bytes), each row's example written in log order.
    onBytes = phases.start('write', logBytes);
    if (tmp) {
      await fs.promises.mkdir(path.dirname(path.resolve(tmp)), { recursive: true });
      fileStream = fs.createWriteStream(tmp);
      await new Promise<void>((resolve, reject) => fileStream!.once('open', () => resolve()).once('error', reject));
    }
    const out = new Output(fileStream ?? stdout);
    for await (const l of readFeatureLog(files, onBytes)) {
      if (l.io) throw new IoError(`${l.file}: ${l.error}`);
      if (l.row === undefined) continue;
      const ex = join.example(l.row);
      if (ex) await out.write(JSON.stringify(ex) + '\n');
    }
    await out.flush();
    phases.stop();
    if (fileStream) {
      const s = fileStream;
      await new Promise<void>((resolve, reject) => {
        s.once('finish', resolve).once('error', reject);
        s.end();
      });
      fileStream = null;
      await fs.promises.rename(tmp!, opts.out);
    }
  } catch (err) {
    phases.stop();
    fileStream?.destroy();
    if (tmp) await fs.promises.unlink(tmp).catch(() => undefined);
    say(`funnel examples: ${(err as Error).message}\n`);
    return 3;
  }
  say(summary(join.counts(), bad));
  return bad.log + bad.events > 0 ? 1 : 0;
}
