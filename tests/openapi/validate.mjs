// Validates an OpenAPI 3.0/3.1 document with @readme/openapi-parser (an independent validator):
// the official OpenAPI JSON Schema plus its semantic rules (path template parameters declared and
// required, no unknown path parameters, unique operationIds, no duplicate parameters, arrays have
// items, security schemes well-formed, internal $refs resolve).
//   node tests/openapi/validate.mjs FILE.json     (or - to read the document from stdin)
// Valid: prints "valid OpenAPI <version>: <N> paths" and exits 0.
// Invalid: prints the validator's error message(s) to stderr and exits 1.
// Only internal $refs ("#/...") are accepted, so nothing is read from disk or the network.
import { readFileSync } from 'node:fs'
import { validate, compileErrors } from '@readme/openapi-parser'

function fail(message) {
  process.stderr.write(message.endsWith('\n') ? message : message + '\n')
  process.exit(1)
}

const args = process.argv.slice(2)
if (args.length !== 1) fail('usage: node tests/openapi/validate.mjs FILE.json|-')

let text
try {
  text = readFileSync(args[0] === '-' ? 0 : args[0], 'utf8')
} catch (e) {
  fail(`cannot read ${args[0]}: ${e.message}`)
}

let doc
try {
  doc = JSON.parse(text)
} catch (e) {
  fail(`not JSON: ${e.message}`)
}
if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) fail('not an OpenAPI document: top level is not a JSON object')
// The library also accepts Swagger 2.0; this checker is for OpenAPI 3 only.
if (typeof doc.openapi !== 'string' || !doc.openapi.startsWith('3.')) {
  fail(`not an OpenAPI 3 document: "openapi" is ${JSON.stringify(doc.openapi)}` +
       (doc.swagger !== undefined ? ` (Swagger ${JSON.stringify(doc.swagger)})` : ''))
}
const version = doc.openapi
const paths = doc.paths && typeof doc.paths === 'object' ? Object.keys(doc.paths).length : 0

// The library's http resolver cannot be switched off, so refuse external $refs up front.
const external = []
;(function walk(node, at) {
  if (Array.isArray(node)) node.forEach((v, i) => walk(v, `${at}/${i}`))
  else if (node && typeof node === 'object') {
    for (const [k, v] of Object.entries(node)) {
      if (k === '$ref' && typeof v === 'string' && !v.startsWith('#')) external.push(`${at}/$ref: ${v}`)
      walk(v, `${at}/${k.replace(/~/g, '~0').replace(/\//g, '~1')}`)
    }
  }
})(doc, '#')
if (external.length) fail(`external $ref not allowed (documents must be self-contained):\n  ${external.join('\n  ')}`)

let result
try {
  // Full validation: JSON Schema of the document's OpenAPI version plus every semantic rule
  // (all at their default level, "error").
  result = await validate(doc, { resolve: { external: false } })
} catch (e) {
  fail(e && e.message ? e.message : String(e))
}
if (!result.valid) fail(compileErrors(result))
if (result.warnings.length) process.stderr.write(compileErrors(result) + '\n')
process.stdout.write(`valid OpenAPI ${version}: ${paths} paths\n`)
