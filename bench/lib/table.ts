/** The benchmarks' tables: the CLI's (one implementation). */
export * from '../../src/cli/table';
