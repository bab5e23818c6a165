'use strict';
// s3rver (this folder's npm package, the S3-compatible server the suite runs) with the two
// multipart operations s3rver 3.7.1 does not implement: AbortMultipartUpload (s3rver answers
// 405 MethodNotAllowed) and ListMultipartUploads (501 NotImplemented). Both work on s3rver's
// own store of uploads in progress, <directory>/<bucket>/._S3rver_uploads/<uploadId>/ (files
// `key`, `metadata` and one per part), which s3rver's initiate/upload-part/complete use; every
// other request is s3rver's. Used by tests/e2e/lake_s3_abort_e2e.py.
//
//   node s3rver_multipart.js DIRECTORY PORT BUCKET
const fs = require('fs');
const path = require('path');
const S3rver = require(path.join(__dirname, 'node_modules', 's3rver'));

const [directory, port, bucket] = process.argv.slice(2);
if (!directory || !port || !bucket) {
  console.error('usage: node s3rver_multipart.js DIRECTORY PORT BUCKET');
  process.exit(2);
}
fs.mkdirSync(directory, { recursive: true });
const server = new S3rver({
  directory,
  port: Number(port),
  address: '127.0.0.1',
  silent: true,
  configureBuckets: [{ name: bucket }],
});

const uploadsDir = (b) => path.join(directory, b, '._S3rver_uploads');
const escapeXml = (s) =>
  s.replace(/[<>&'"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', "'": '&apos;', '"': '&quot;' })[c]);

function error(ctx, status, code, message) {
  ctx.status = status;
  ctx.type = 'application/xml';
  ctx.body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message></Error>`;
}

// Runs before s3rver's own middleware (Koa composes `middleware` when the server starts).
server.middleware.unshift(async (ctx, next) => {
  const m = /^\/([^/]+)(?:\/(.+))?$/.exec(ctx.path);
  if (!m) return next();
  const b = decodeURIComponent(m[1]);
  const key = m[2] === undefined ? undefined : decodeURIComponent(m[2]);
  if (!fs.existsSync(path.join(directory, b))) return next(); // s3rver answers NoSuchBucket

  if (ctx.method === 'DELETE' && key !== undefined && 'uploadId' in ctx.query) {
    const id = String(ctx.query.uploadId);
    const dir = path.join(uploadsDir(b), id);
    let storedKey = null;
    try {
      if (/^[0-9a-f]+$/.test(id)) storedKey = fs.readFileSync(path.join(dir, 'key'), 'utf8');
    } catch (e) {
      storedKey = null;
    }
    if (storedKey !== key) {
      return error(ctx, 404, 'NoSuchUpload', 'The specified upload does not exist.');
    }
    fs.rmSync(dir, { recursive: true, force: true });
    ctx.status = 204;
    return;
  }

  if (ctx.method === 'GET' && key === undefined && 'uploads' in ctx.query) {
    const prefix = String(ctx.query.prefix || '');
    let ids = [];
    try {
      ids = fs.readdirSync(uploadsDir(b));
    } catch (e) {
      ids = [];
    }
    const uploads = [];
    for (const id of ids) {
      try {
        const k = fs.readFileSync(path.join(uploadsDir(b), id, 'key'), 'utf8');
        const initiated = fs.statSync(path.join(uploadsDir(b), id, 'key')).mtime.toISOString();
        if (k.startsWith(prefix)) uploads.push({ k, id, initiated });
      } catch (e) {
        // completed or aborted meanwhile
      }
    }
    uploads.sort((x, y) => (x.k < y.k ? -1 : x.k > y.k ? 1 : x.id < y.id ? -1 : 1));
    ctx.status = 200;
    ctx.type = 'application/xml';
    ctx.body =
      '<?xml version="1.0" encoding="UTF-8"?>\n<ListMultipartUploadsResult>' +
      `<Bucket>${escapeXml(b)}</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>` +
      `<Prefix>${escapeXml(prefix)}</Prefix><MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated>` +
      uploads
        .map(
          (u) =>
            `<Upload><Key>${escapeXml(u.k)}</Key><UploadId>${u.id}</UploadId>` +
            `<Initiated>${u.initiated}</Initiated><StorageClass>STANDARD</StorageClass></Upload>`,
        )
        .join('') +
      '</ListMultipartUploadsResult>';
    return;
  }
  return next();
});

server.run().then(
  () => console.log(`s3rver_multipart: listening on 127.0.0.1:${port}, bucket ${bucket}`),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
process.on('SIGTERM', () => server.close().then(() => process.exit(0)));
