// Runs one SQL query in DuckDB (an independent Parquet reader) and prints its rows as a JSON
// array: `node duck.mjs "SELECT ... FROM read_parquet('.../*.parquet', union_by_name = true)"`.
// BIGINT and DECIMAL values print as strings, DATE as YYYY-MM-DD.
import { DuckDBInstance } from '@duckdb/node-api'

const instance = await DuckDBInstance.create(':memory:')
const connection = await instance.connect()
const reader = await connection.runAndReadAll(process.argv[2])
process.stdout.write(JSON.stringify(reader.getRowObjectsJson()))
