// Reads the files tests/unit/parquet_fixture.cpp wrote with hyparquet (an independent Parquet
// reader) and compares every value and the metadata strata promises. Exit code 1 on any mismatch.
import { readFileSync } from 'node:fs'
import { parquetMetadata, parquetReadObjects } from 'hyparquet'
import { compressors } from 'hyparquet-compressors'

const dir = process.argv[2]
const expected = JSON.parse(readFileSync(`${dir}/expected.json`, 'utf8'))
const parsers = {
  timestampFromMicroseconds: (us) => `us:${us}`,
  dateFromDays: (d) => `days:${d}`,
}
let failures = 0
const check = (ok, what) => {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`)
  if (!ok) failures++
}
const norm = (v) => (typeof v === 'bigint' ? v.toString() : v === undefined ? null : v)

for (const codec of ['none', 'snappy', 'zstd', 'groups']) {
  const bytes = readFileSync(`${dir}/${codec}.parquet`)
  const file = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)
  const rows = await parquetReadObjects({ file, compressors, parsers })
  check(rows.length === expected.length, `${codec}: ${rows.length} rows`)
  let mismatches = 0
  rows.forEach((row, i) => {
    for (const [k, want] of Object.entries(expected[i])) {
      const got = norm(row[k])
      if (JSON.stringify(got) !== JSON.stringify(want)) {
        if (mismatches++ < 5) console.log(`  row ${i} ${k}: got ${JSON.stringify(got)} want ${JSON.stringify(want)}`)
      }
    }
  })
  check(mismatches === 0, `${codec}: every value of ${expected.length} rows x ${Object.keys(expected[0]).length} columns equals what was written`)
  const md = parquetMetadata(file)
  const cols = md.row_groups[0].columns.map((c) => c.meta_data)
  const byName = Object.fromEntries(cols.map((c) => [c.path_in_schema[0], c]))
  // Statistics are per row group: fold them over the file.
  const stat = (name, f) => md.row_groups.map((g) => g.columns.find((c) => c.meta_data.path_in_schema[0] === name).meta_data.statistics).reduce(f)
  const sum = (a, b) => ({ null_count: Number(a.null_count) + Number(b.null_count) })
  check(md.created_by === 'strata' && Number(md.num_rows) === expected.length, `${codec}: footer num_rows and created_by`)
  check(cols.every((c) => c.codec === { none: 'UNCOMPRESSED', snappy: 'SNAPPY', zstd: 'ZSTD', groups: 'ZSTD' }[codec]), `${codec}: codec recorded per column`)
  check(md.row_groups.length === (codec === 'groups' ? 8 : 1), `${codec}: ${md.row_groups.length} row group(s)`)
  check(byName.category.encodings.includes('RLE_DICTIONARY') && byName.name.encodings.includes('PLAIN') &&
        !byName.name.encodings.includes('RLE_DICTIONARY'), `${codec}: repeated values dictionary-encoded, distinct ones PLAIN`)
  const nulls = expected.filter((e) => e.price === null).length
  check(Number(stat('price', sum).null_count) === nulls && Number(stat('never', sum).null_count) === expected.length,
        `${codec}: null_count statistics (${nulls})`)
  const prices = expected.map((e) => e.price).filter((p) => p !== null)
  const pmin = Math.min(...md.row_groups.map((g) => g.columns[1].meta_data.statistics.min_value))
  const pmax = Math.max(...md.row_groups.map((g) => g.columns[1].meta_data.statistics.max_value))
  check(pmin === Math.min(...prices) && pmax === Math.max(...prices), `${codec}: min/max statistics of a DOUBLE column`)
  check(String(byName.id.statistics.min_value) === '-9007199254740993', `${codec}: INT64 min statistic beyond 2^53`)
}
const empty = readFileSync(`${dir}/empty.parquet`)
const rows = await parquetReadObjects({ file: empty.buffer.slice(empty.byteOffset, empty.byteOffset + empty.byteLength), compressors })
check(rows.length === 0, 'an empty table is a valid file with no rows')
process.exit(failures ? 1 : 0)
