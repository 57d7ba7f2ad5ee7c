/** `funnel config validate FILE` and `funnel config print [--config FILE]`. */
import { stringify } from 'yaml';
import { ConfigError, defaultConfig, loadConfigFile } from '../config/load';

/** Prints a config problem and returns the exit code: 1 with every `file: path: reason` for a bad config, 3 otherwise. */
function reportFailure(command: string, file: string | undefined, err: unknown): number {
  if (err instanceof ConfigError) {
    for (const issue of err.issues) process.stderr.write(`${file}: ${issue}\n`);
    return 1;
  }
  process.stderr.write(`funnel config ${command}: ${(err as Error).message}\n`);
  return 3;
}

/** Validates a config file: exit 0 and a summary, or 1 and every problem (`path: reason`). */
export async function runConfigValidate(file: string): Promise<number> {
  try {
    const c = loadConfigFile(file);
    const arms = c.experiments.arms.length;
    process.stdout.write(
      `${file}: valid (version ${c.version}; pipelines ${Object.keys(c.pipelines).join(', ')}; default ${c.default_pipeline}` +
        `${arms > 0 ? `; ${arms} experiment arm(s)` : ''})\n`,
    );
    return 0;
  } catch (err) {
    return reportFailure('validate', file, err);
  }
}

/** Prints the effective config (defaults filled in, inherits resolved) as YAML. */
export async function runConfigPrint(file: string | undefined): Promise<number> {
  try {
    const c = file ? loadConfigFile(file) : defaultConfig();
    process.stdout.write(stringify(c, { lineWidth: 0 }));
    return 0;
  } catch (err) {
    return reportFailure('print', file, err);
  }
}
