// Prints a Parquet file's rows as a JSON array, read by hyparquet (an independent reader):
// INT64 as decimal strings, timestamps as "us:<micros since epoch>", dates as "days:<n>".
import { readFileSync } from 'node:fs'
import { parquetReadObjects } from 'hyparquet'
import { compressors } from 'hyparquet-compressors'

const bytes = readFileSync(process.argv[2])
const rows = await parquetReadObjects({
  file: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength),
  compressors,
  parsers: { timestampFromMicroseconds: (us) => `us:${us}`, dateFromDays: (d) => `days:${d}` },
})
process.stdout.write(JSON.stringify(rows, (_, v) => (typeof v === 'bigint' ? v.toString() : v)))
