/**
 * Hot reload of the config file: the directory holding it is watched (Kubernetes ConfigMaps
 * swap a `..data` symlink, which a watch on the file itself would miss), events are debounced,
 * and the file is re-read, validated and handed over only when its content changed. A bad file
 * is refused and reported; the caller keeps the config it had. SIGHUP goes through reload().
 * The config's ONNX models are loaded and validated off the event loop before it is handed
 * over: requests go on with the previous config meanwhile, and a model that fails refuses the
 * file like any other config error.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ConfigError, loadConfigModels, parseConfigText } from './load';
import type { Config } from './schema';

/** What a reload did. */
export type ReloadOutcome = { result: 'ok'; config: Config } | { result: 'unchanged' } | { result: 'error'; error: ConfigError };

/** Watches one config file. */
export class ConfigWatcher {
  private watcher: fs.FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private lastHash: string;
  private running: Promise<ReloadOutcome> | undefined;
  /** The refusal of the current text, when it was refused (an explicit reload reports it again). */
  private lastError: ConfigError | undefined;

  /**
   * `initialText` is the text the current config came from (so a touch without a change is not
   * a reload). `apply` receives each new valid config; `report` every outcome but 'unchanged'.
   */
  constructor(
    readonly file: string,
    initialText: string,
    private readonly apply: (config: Config) => void,
    private readonly report: (outcome: ReloadOutcome) => void,
    private readonly debounceMs = 100,
  ) {
    this.lastHash = hash(initialText);
  }

  /** Starts watching the file's directory. */
  start(): this {
    if (this.watcher) return this;
    this.watcher = fs.watch(path.dirname(path.resolve(this.file)), { persistent: false }, () => this.schedule());
    this.watcher.on('error', () => this.schedule());
    return this;
  }

  /** Stops watching. */
  stop(): void {
    this.watcher?.close();
    this.watcher = undefined;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private schedule(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.run(false);
    }, this.debounceMs);
    this.timer.unref();
  }

  /** Re-reads the file now (SIGHUP); a valid changed config is applied; an unchanged refused file is reported again. Never throws. */
  reload(): Promise<ReloadOutcome> {
    return this.run(true);
  }

  private run(explicit: boolean): Promise<ReloadOutcome> {
    // One reload at a time. A request during one (an event, SIGHUP) reads the file again after
    // it: a reload that waits for a model may have read the file before the change that asked.
    if (this.running) return this.running.then(() => this.run(explicit));
    this.running = Promise.resolve()
      .then(() => this.readAndApply(explicit))
      .finally(() => {
        this.running = undefined;
      });
    return this.running;
  }

  private async readAndApply(explicit: boolean): Promise<ReloadOutcome> {
    let text: string;
    try {
      text = fs.readFileSync(this.file, 'utf8');
    } catch (err) {
      const outcome: ReloadOutcome = { result: 'error', error: new ConfigError(this.file, [`cannot read: ${(err as Error).message}`]) };
      this.report(outcome);
      return outcome;
    }
    const h = hash(text);
    if (h === this.lastHash) {
      if (explicit && this.lastError) {
        const outcome: ReloadOutcome = { result: 'error', error: this.lastError };
        this.report(outcome);
        return outcome;
      }
      return { result: 'unchanged' };
    }
    let config: Config;
    try {
      config = parseConfigText(text, this.file, { models: 'skip' });
      await loadConfigModels(config, this.file);
    } catch (err) {
      const error = err instanceof ConfigError ? err : new ConfigError(this.file, [(err as Error).message]);
      // The bad text is remembered so the same bad file is not reported on every event.
      this.lastHash = h;
      this.lastError = error;
      const outcome: ReloadOutcome = { result: 'error', error };
      this.report(outcome);
      return outcome;
    }
    this.lastHash = h;
    this.lastError = undefined;
    this.apply(config);
    const outcome: ReloadOutcome = { result: 'ok', config };
    this.report(outcome);
    return outcome;
  }
}

function hash(text: string): string {
  return crypto.createHash('sha256').update(text).digest('hex');
}
