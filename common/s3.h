// An S3-compatible object store client over libcurl, signed with AWS Signature Version 4.
//
// What it promises:
//  * SignV4() produces the Authorization header AWS (and botocore) compute for the same request:
//    canonical URI with each path segment URI-encoded, sorted canonical query, lower-cased
//    sorted headers (host, x-amz-content-sha256, x-amz-date and any others given), the payload's
//    SHA-256; tests compare it with botocore's for the same requests;
//  * S3Client addresses buckets path-style (http://host/bucket/key) or virtual-host style
//    (http://bucket.host/key); PUTs larger than `multipart_threshold` go as a multipart upload
//    (parts of `part_size`, completed in order, aborted on failure); transport errors, 5xx and
//    503 SlowDown are retried with backoff, other errors throw EnvError naming the method, the
//    bucket/key and S3's error code; credentials never appear in messages.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace strata {

struct S3Config {
  std::string endpoint = "http://127.0.0.1:9000";  // scheme://host[:port]
  std::string region = "us-east-1";
  std::string bucket;
  std::string access_key;
  std::string secret_key;
  bool path_style = true;
  size_t multipart_threshold = 8 * 1024 * 1024;
  size_t part_size = 5 * 1024 * 1024;  // S3's minimum for all but the last part
  int max_attempts = 4;
  int stall_seconds = 10;  // a request that moves no byte for this long fails (and is retried)
};

std::string Sha256Hex(const std::string& data);
// RFC 3986 encoding as SigV4 wants it (UrlEncode of common/http_client.h); '/' kept when
// !encode_slash.
std::string UriEncode(const std::string& s, bool encode_slash);

// The Authorization header value for a request. `path` is the raw (unencoded) path starting
// with '/', `query` the raw parameters, `headers` every header to sign (host and x-amz-* added
// by the caller), `amz_date` "YYYYMMDDTHHMMSSZ".
std::string SignV4(const std::string& method, const std::string& path,
                   const std::map<std::string, std::string>& query,
                   const std::map<std::string, std::string>& headers, const std::string& payload_sha256,
                   const std::string& access_key, const std::string& secret_key, const std::string& region,
                   const std::string& amz_date, const std::string& service = "s3");

class S3Client {
 public:
  explicit S3Client(S3Config config);
  void Put(const std::string& key, const std::string& data);
  std::optional<std::string> Get(const std::string& key);  // nullopt: no such key
  void Delete(const std::string& key);
  std::vector<std::string> List(const std::string& prefix);  // every key under prefix, all pages
  void CreateBucket();                                        // succeeds if it exists and is ours
  const S3Config& config() const { return c_; }

  // Multipart upload in steps, for writers that stream: parts (>= 5 MiB but the last) are
  // numbered from 1; Complete takes their ETags in order; Abort is best effort.
  std::string StartMultipart(const std::string& key);
  std::string UploadPart(const std::string& key, const std::string& upload_id, int part, const std::string& data);
  void CompleteMultipart(const std::string& key, const std::string& upload_id, const std::vector<std::string>& etags);
  void AbortMultipart(const std::string& key, const std::string& upload_id);

  struct Response {
    long status = 0;
    std::string body;
    std::map<std::string, std::string> headers;  // lower-cased names
  };

 private:
  Response Request(const std::string& method, const std::string& key, std::map<std::string, std::string> query,
                   const std::string& payload, const std::string& what);
  void PutMultipart(const std::string& key, const std::string& data);
  S3Config c_;
};

}  // namespace strata
