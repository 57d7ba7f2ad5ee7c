#!/usr/bin/env node
/**
 * The `funnel` command line (CONTRACT section 3).
 * Exit codes: 0 success; 1 bad input data (catalog rows); 2 bad usage; 3 data directory or I/O problem.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { runIngest } from './ingest-command';
import { runStats } from './stats-command';

/** Exit codes of the command line. */
export const EXIT = { ok: 0, badData: 1, usage: 2, dataDir: 3 } as const;

function positiveInt(name: string, max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1 || n > max) throw new InvalidArgumentError(`${name} must be an integer in 1..${max}`);
    return n;
  };
}

/** Builds the program; `main` parses argv with it. */
export function buildProgram(): Command {
  const program = new Command('funnel')
    .description('ads candidate retrieval: ingest catalogs, inspect data directories, serve the funnel')
    .showHelpAfterError()
    .exitOverride();
  program
    .command('ingest')
    .description('create or update a data directory (LMDB store and ANN index) from a catalog JSONL file')
    .requiredOption('--catalog <file>', 'catalog file, one JSON ad per line')
    .requiredOption('--data <dir>', 'data directory (created if missing)')
    .option('--replace', 'make the directory hold exactly the file (delete ads absent from it)', false)
    .addOption(new Option('--metric <metric>', 'ANN metric for a new or replaced directory').choices(['ip', 'cos', 'l2']))
    .option('--ann-m <n>', 'HNSW degree M for a new or replaced directory', positiveInt('--ann-m', 128))
    .option('--ann-ef-construction <n>', 'HNSW efConstruction for a new or replaced directory', positiveInt('--ann-ef-construction', 4096))
    .option('--threads <n>', 'threads for the ANN build (default: all cores)', positiveInt('--threads', 256))
    .action(async (opts) => {
      process.exitCode = await runIngest(opts);
    });
  program
    .command('stats')
    .description('print counts (ads, active, by category), dimension and index sizes of a data directory')
    .requiredOption('--data <dir>', 'data directory')
    .option('--json', 'print one JSON object instead of text', false)
    .action(async (opts) => {
      process.exitCode = await runStats(opts);
    });
  return program;
}

/** Runs the command line on `argv` (process.argv form) and resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT.ok;
  } catch (err) {
    if (err instanceof CommanderError) {
      return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    process.stderr.write(`funnel: ${(err as Error).message}\n`);
    return EXIT.dataDir;
  }
}

if (require.main === module) {
  main(process.argv).then((code) => {
    process.exitCode = code;
  });
}
