#include "common/s3.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <ctime>
#include <pugixml.hpp>
#include <spdlog/spdlog.h>
#include <thread>

#include "common/errors.h"
#include "common/http_client.h"

namespace strata {

namespace {

std::string Hex(const unsigned char* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string out(n * 2, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = d[p[i] >> 4];
    out[2 * i + 1] = d[p[i] & 15];
  }
  return out;
}

std::string Hmac(const std::string& key, const std::string& msg) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(msg.data()),
       msg.size(), out, &len);
  return std::string(reinterpret_cast<char*>(out), len);
}

std::string Trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t");
  if (a == std::string::npos) return "";
  const size_t b = s.find_last_not_of(" \t");
  return s.substr(a, b - a + 1);
}

std::string AmzDateNow() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[20];
  std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

size_t OnBody(char* p, size_t size, size_t n, void* ud) {
  static_cast<std::string*>(ud)->append(p, size * n);
  return size * n;
}

size_t OnHeader(char* p, size_t size, size_t n, void* ud) {
  const std::string line(p, size * n);
  const size_t colon = line.find(':');
  if (colon != std::string::npos) {
    std::string name = line.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    std::string value = Trim(line.substr(colon + 1));
    while (!value.empty() && (value.back() == '\r' || value.back() == '\n')) value.pop_back();
    (*static_cast<std::map<std::string, std::string>*>(ud))[name] = value;
  }
  return size * n;
}

struct ReadState {
  const std::string* data;
  size_t pos = 0;
};

size_t OnRead(char* buf, size_t size, size_t n, void* ud) {
  auto* st = static_cast<ReadState*>(ud);
  const size_t k = std::min(size * n, st->data->size() - st->pos);
  std::memcpy(buf, st->data->data() + st->pos, k);
  st->pos += k;
  return k;
}

std::string ErrorCode(const std::string& body) {
  pugi::xml_document doc;
  if (!doc.load_string(body.c_str())) return "";
  return doc.child("Error").child_value("Code");
}

}  // namespace

std::string Sha256Hex(const std::string& data) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), d);
  return Hex(d, sizeof d);
}

std::string UriEncode(const std::string& s, bool encode_slash) {
  if (encode_slash) return UrlEncode(s);
  // A path: each segment encoded, the slashes between them kept.
  std::string out;
  size_t start = 0;
  for (size_t slash; (slash = s.find('/', start)) != std::string::npos; start = slash + 1)
    out += UrlEncode(s.substr(start, slash - start)) + "/";
  return out + UrlEncode(s.substr(start));
}

std::string SignV4(const std::string& method, const std::string& path, const std::map<std::string, std::string>& query,
                   const std::map<std::string, std::string>& headers, const std::string& payload_sha256,
                   const std::string& access_key, const std::string& secret_key, const std::string& region,
                   const std::string& amz_date, const std::string& service) {
  std::vector<std::pair<std::string, std::string>> q;
  for (const auto& [k, v] : query) q.emplace_back(UriEncode(k, true), UriEncode(v, true));
  std::sort(q.begin(), q.end());
  std::string canonical_query;
  for (const auto& [k, v] : q) canonical_query += (canonical_query.empty() ? "" : "&") + k + "=" + v;
  std::map<std::string, std::string> h;
  for (const auto& [k, v] : headers) {
    std::string name = k;
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    h[name] = Trim(v);
  }
  std::string canonical_headers, signed_headers;
  for (const auto& [k, v] : h) {
    canonical_headers += k + ":" + v + "\n";
    signed_headers += (signed_headers.empty() ? "" : ";") + k;
  }
  const std::string canonical = method + "\n" + UriEncode(path, false) + "\n" + canonical_query + "\n" + canonical_headers +
                                "\n" + signed_headers + "\n" + payload_sha256;
  const std::string date = amz_date.substr(0, 8);
  const std::string scope = date + "/" + region + "/" + service + "/aws4_request";
  const std::string to_sign = "AWS4-HMAC-SHA256\n" + amz_date + "\n" + scope + "\n" + Sha256Hex(canonical);
  const std::string key = Hmac(Hmac(Hmac(Hmac("AWS4" + secret_key, date), region), service), "aws4_request");
  const std::string sig = Hmac(key, to_sign);
  return "AWS4-HMAC-SHA256 Credential=" + access_key + "/" + scope + ", SignedHeaders=" + signed_headers +
         ", Signature=" + Hex(reinterpret_cast<const unsigned char*>(sig.data()), sig.size());
}

S3Client::S3Client(S3Config config) : c_(std::move(config)) {
  if (c_.bucket.empty()) throw InputError("s3: bucket is not configured");
  if (c_.endpoint.rfind("http://", 0) != 0 && c_.endpoint.rfind("https://", 0) != 0)
    throw InputError("s3: endpoint \"" + c_.endpoint + "\" must start with http:// or https://");
  if (c_.part_size < 5 * 1024 * 1024) throw InputError("s3: part_size must be at least 5 MiB");
}

S3Client::Response S3Client::Request(const std::string& method, const std::string& key,
                                     std::map<std::string, std::string> query, const std::string& payload,
                                     const std::string& what) {
  const size_t scheme_end = c_.endpoint.find("://") + 3;
  const std::string scheme = c_.endpoint.substr(0, scheme_end);
  const std::string host_port = c_.endpoint.substr(scheme_end);
  const std::string host = c_.path_style ? host_port : c_.bucket + "." + host_port;
  const std::string path = c_.path_style ? "/" + c_.bucket + (key.empty() ? "" : "/" + key) : "/" + key;
  std::string url = scheme + host + UriEncode(path, false);
  std::string qs;
  for (const auto& [k, v] : query) qs += (qs.empty() ? "?" : "&") + UriEncode(k, true) + (v.empty() && k != "uploads" ? "=" : v.empty() ? "" : "=" + UriEncode(v, true));
  url += qs;
  for (int attempt = 1;; ++attempt) {
    const std::string amz_date = AmzDateNow();
    const std::string payload_hash = Sha256Hex(payload);
    std::map<std::string, std::string> headers = {
        {"host", host}, {"x-amz-date", amz_date}, {"x-amz-content-sha256", payload_hash}};
    const std::string auth = SignV4(method, path, query, headers, payload_hash, c_.access_key, c_.secret_key,
                                    c_.region, amz_date);
    CURL* curl = curl_easy_init();
    if (!curl) throw EnvError("s3: curl_easy_init failed");
    struct curl_slist* hl = nullptr;
    hl = curl_slist_append(hl, ("x-amz-date: " + amz_date).c_str());
    hl = curl_slist_append(hl, ("x-amz-content-sha256: " + payload_hash).c_str());
    hl = curl_slist_append(hl, ("Authorization: " + auth).c_str());
    hl = curl_slist_append(hl, "Expect:");
    hl = curl_slist_append(hl, "Content-Type:");
    Response resp;
    ReadState rs{&payload, 0};
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, OnBody);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &resp.body);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, OnHeader);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &resp.headers);
    // A store that stops answering is noticed in seconds (no progress for stall_seconds), while
    // a large part on a slow link still has time to finish.
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, static_cast<long>(c_.stall_seconds));
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 300000L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    if (method == "PUT") {
      curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(curl, CURLOPT_READFUNCTION, OnRead);
      curl_easy_setopt(curl, CURLOPT_READDATA, &rs);
      curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(payload.size()));
    } else if (method == "POST") {
      curl_easy_setopt(curl, CURLOPT_POST, 1L);
      curl_easy_setopt(curl, CURLOPT_POSTFIELDS, payload.data());
      curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(payload.size()));
    } else if (method != "GET") {
      curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method.c_str());
    }
    const CURLcode rc = curl_easy_perform(curl);
    if (rc == CURLE_OK) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &resp.status);
    curl_slist_free_all(hl);
    curl_easy_cleanup(curl);
    const bool retry = rc != CURLE_OK || resp.status >= 500;
    if (!retry || attempt >= c_.max_attempts) {
      if (rc != CURLE_OK)
        throw EnvError("s3 " + what + " s3://" + c_.bucket + "/" + key + ": " + curl_easy_strerror(rc) + " after " +
                       std::to_string(attempt) + " attempt(s)");
      return resp;
    }
    spdlog::warn("s3 {} s3://{}/{}: attempt {} of {} failed ({}), retrying", what, c_.bucket, key, attempt,
                 c_.max_attempts, rc != CURLE_OK ? curl_easy_strerror(rc) : "HTTP " + std::to_string(resp.status));
    std::this_thread::sleep_for(std::chrono::milliseconds(100L << attempt));
  }
}

namespace {
[[noreturn]] void Fail(const std::string& what, const std::string& bucket, const std::string& key,
                       const S3Client::Response& r) {
  const std::string code = ErrorCode(r.body);
  throw EnvError("s3 " + what + " s3://" + bucket + "/" + key + ": HTTP " + std::to_string(r.status) +
                 (code.empty() ? "" : " " + code));
}
}  // namespace

void S3Client::CreateBucket() {
  const Response r = Request("PUT", "", {}, "", "create bucket");
  if (r.status == 200) return;
  const std::string code = ErrorCode(r.body);
  if (r.status == 409 && code == "BucketAlreadyOwnedByYou") return;
  // Some S3-compatible servers answer BucketAlreadyExists to its owner too: usable if we can list it.
  if (r.status == 409 && code == "BucketAlreadyExists" &&
      Request("GET", "", {{"list-type", "2"}, {"max-keys", "1"}}, "", "LIST").status == 200)
    return;
  Fail("create bucket", c_.bucket, "", r);
}

void S3Client::Put(const std::string& key, const std::string& data) {
  if (data.size() > c_.multipart_threshold) return PutMultipart(key, data);
  const Response r = Request("PUT", key, {}, data, "PUT");
  if (r.status != 200) Fail("PUT", c_.bucket, key, r);
}

std::string S3Client::StartMultipart(const std::string& key) {
  const Response init = Request("POST", key, {{"uploads", ""}}, "", "initiate multipart");
  if (init.status != 200) Fail("initiate multipart", c_.bucket, key, init);
  pugi::xml_document doc;
  doc.load_string(init.body.c_str());
  const std::string upload_id = doc.child("InitiateMultipartUploadResult").child_value("UploadId");
  if (upload_id.empty()) throw EnvError("s3 initiate multipart " + c_.bucket + "/" + key + ": no UploadId in the reply");
  return upload_id;
}

std::string S3Client::UploadPart(const std::string& key, const std::string& upload_id, int part, const std::string& data) {
  const Response r = Request("PUT", key, {{"partNumber", std::to_string(part)}, {"uploadId", upload_id}}, data,
                             "upload part " + std::to_string(part));
  if (r.status != 200) Fail("upload part " + std::to_string(part), c_.bucket, key, r);
  auto etag = r.headers.find("etag");
  if (etag == r.headers.end()) throw EnvError("s3 upload part " + std::to_string(part) + " of " + key + ": no ETag");
  return etag->second;
}

void S3Client::CompleteMultipart(const std::string& key, const std::string& upload_id,
                                 const std::vector<std::string>& etags) {
  std::string complete = "<CompleteMultipartUpload>";
  for (size_t i = 0; i < etags.size(); ++i)
    complete += "<Part><PartNumber>" + std::to_string(i + 1) + "</PartNumber><ETag>" + etags[i] + "</ETag></Part>";
  complete += "</CompleteMultipartUpload>";
  const Response done = Request("POST", key, {{"uploadId", upload_id}}, complete, "complete multipart");
  // S3 may answer 200 with an <Error> body when completion fails late.
  if (done.status != 200 || !ErrorCode(done.body).empty()) Fail("complete multipart", c_.bucket, key, done);
}

void S3Client::AbortMultipart(const std::string& key, const std::string& upload_id) {
  // Best effort: the bucket's lifecycle rule for incomplete uploads is the backstop. A refused
  // abort is said, though, so a store that keeps dangling uploads is noticed before the bill.
  try {
    const Response r = Request("DELETE", key, {{"uploadId", upload_id}}, "", "abort multipart");
    if (r.status != 204 && r.status != 200 && r.status != 404)
      spdlog::warn("s3 abort multipart refused bucket={} key={} upload_id={} status={}", c_.bucket, key, upload_id,
                   r.status);
  } catch (const std::exception& e) {
    spdlog::warn("s3 abort multipart failed bucket={} key={} upload_id={} error={}", c_.bucket, key, upload_id,
                 e.what());
  }
}

void S3Client::PutMultipart(const std::string& key, const std::string& data) {
  const std::string upload_id = StartMultipart(key);
  try {
    std::vector<std::string> etags;
    for (size_t off = 0; off < data.size(); off += c_.part_size)
      etags.push_back(UploadPart(key, upload_id, static_cast<int>(etags.size()) + 1, data.substr(off, c_.part_size)));
    CompleteMultipart(key, upload_id, etags);
  } catch (...) {
    AbortMultipart(key, upload_id);
    throw;
  }
}

std::optional<std::string> S3Client::Get(const std::string& key) {
  Response r = Request("GET", key, {}, "", "GET");
  if (r.status == 404) return std::nullopt;
  if (r.status != 200) Fail("GET", c_.bucket, key, r);
  return std::move(r.body);
}

void S3Client::Delete(const std::string& key) {
  const Response r = Request("DELETE", key, {}, "", "DELETE");
  if (r.status != 204 && r.status != 200 && r.status != 404) Fail("DELETE", c_.bucket, key, r);
}

std::vector<std::string> S3Client::List(const std::string& prefix) {
  std::vector<std::string> keys;
  std::string token;
  for (;;) {
    std::map<std::string, std::string> q = {{"list-type", "2"}, {"prefix", prefix}};
    if (!token.empty()) q["continuation-token"] = token;
    const Response r = Request("GET", "", q, "", "LIST");
    if (r.status != 200) Fail("LIST", c_.bucket, prefix, r);
    pugi::xml_document doc;
    if (!doc.load_string(r.body.c_str())) throw EnvError("s3 LIST " + c_.bucket + "/" + prefix + ": reply is not XML");
    const auto root = doc.child("ListBucketResult");
    for (auto c = root.child("Contents"); c; c = c.next_sibling("Contents")) keys.push_back(c.child_value("Key"));
    if (std::string(root.child_value("IsTruncated")) != "true") break;
    token = root.child_value("NextContinuationToken");
    if (token.empty()) break;
  }
  return keys;
}

}  // namespace strata
