// Drives strata's S3 client for tests/e2e/s3_e2e.py:
//   s3_tool sign METHOD HOST PATH QUERY PAYLOAD_FILE AMZDATE   prints the Authorization header
//                                                            (QUERY: k=v&k2=v2, raw values)
//   s3_tool check ENDPOINT BUCKET                            behaviour against a real server
#include <fstream>
#include <iostream>
#include <sstream>

#include "common/errors.h"
#include "common/s3.h"

namespace {

int failures = 0;
void Check(bool ok, const std::string& what) {
  std::cout << (ok ? "ok   " : "FAIL ") << what << std::endl;
  if (!ok) ++failures;
}

strata::S3Config Config(const std::string& endpoint, const std::string& bucket) {
  strata::S3Config c;
  c.endpoint = endpoint;
  c.bucket = bucket;
  c.access_key = "S3RVER";
  c.secret_key = "S3RVER";
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> a(argv + 1, argv + argc);
  if (a.size() == 7 && a[0] == "sign") {
    const std::string& method = a[1];
    const std::string& host = a[2];
    const std::string& path = a[3];
    std::map<std::string, std::string> query;
    std::stringstream qs(a[4]);
    for (std::string kv; std::getline(qs, kv, '&');) {
      if (kv.empty()) continue;
      const size_t eq = kv.find('=');
      query[kv.substr(0, eq)] = eq == std::string::npos ? "" : kv.substr(eq + 1);
    }
    std::ifstream in(a[5], std::ios::binary);
    std::stringstream payload;
    payload << in.rdbuf();
    const std::string hash = strata::Sha256Hex(payload.str());
    std::cout << strata::SignV4(method, path, query, {{"host", host}, {"x-amz-date", a[6]}, {"x-amz-content-sha256", hash}},
                                hash, "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "us-east-1", a[6])
              << "\n";
    return 0;
  }
  if (a.size() == 3 && a[0] == "check") {
    strata::S3Client s3(Config(a[1], a[2]));
    // Before the bucket exists, listing it is refused by the server (NoSuchBucket)...
    std::string before;
    try {
      s3.List("");
    } catch (const strata::EnvError& e) {
      before = e.what();
    }
    Check(before.find("NoSuchBucket") != std::string::npos, "listing a bucket that does not exist fails: " + before);
    // ...after CreateBucket (twice: the second finds it exists and is ours) it lists, empty.
    std::string created = "ok";
    try {
      s3.CreateBucket();
      s3.CreateBucket();
    } catch (const std::exception& e) {
      created = e.what();
    }
    std::string listed = "ok";
    size_t keys_in_new_bucket = 0;
    try {
      keys_in_new_bucket = s3.List("").size();
    } catch (const std::exception& e) {
      listed = e.what();
    }
    Check(created == "ok" && listed == "ok" && keys_in_new_bucket == 0,
          "a bucket can be created, creating it again is fine, and it exists, empty (" + created + "; " + listed + ")");
    const std::string small = "hello, lake ✓\n";
    s3.Put("bronze/t/dt=2024-01-01/part 00000.csv", small);
    Check(s3.Get("bronze/t/dt=2024-01-01/part 00000.csv") == small, "a small object round-trips (key with a space)");
    std::string big(12 * 1024 * 1024 + 123, '\0');
    for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 2654435761u) >> 13);
    s3.Put("bronze/t/dt=2024-01-01/big.bin", big);
    const auto got = s3.Get("bronze/t/dt=2024-01-01/big.bin");
    Check(got && got->size() == big.size() && *got == big, "a 12 MiB object goes up in 3 multipart parts and comes back byte-identical");
    for (int i = 0; i < 3; ++i) s3.Put("silver/t/dt=2024-01-0" + std::to_string(i + 1) + "/x", "x");
    const auto keys = s3.List("silver/t/");
    Check(keys.size() == 3 && keys[0] == "silver/t/dt=2024-01-01/x", "LIST returns the 3 keys under a prefix, in order");
    Check(s3.List("bronze/").size() == 2, "and 2 under another");
    s3.Delete("bronze/t/dt=2024-01-01/big.bin");
    Check(!s3.Get("bronze/t/dt=2024-01-01/big.bin").has_value(), "a deleted object is gone (GET -> nullopt)");
    // s3rver checks the access key but not SigV4 signatures (the botocore comparison covers those).
    strata::S3Config bad = Config(a[1], a[2]);
    bad.access_key = "NOT-A-KEY";
    bad.secret_key = "not-the-secret";
    try {
      strata::S3Client(bad).Put("x", "y");
      Check(false, "unknown credentials are refused");
    } catch (const strata::EnvError& e) {
      const std::string msg = e.what();
      Check(msg.find("s3 PUT s3://" + a[2] + "/x: HTTP 403 InvalidAccessKeyId") == 0 && msg.find("not-the-secret") == std::string::npos,
            "unknown credentials fail with S3's error code and without the secret: " + msg);
    }
    strata::S3Config down = Config("http://127.0.0.1:1", a[2]);
    down.max_attempts = 2;
    try {
      strata::S3Client(down).Get("x");
      Check(false, "an unreachable endpoint fails");
    } catch (const strata::EnvError& e) {
      Check(std::string(e.what()).find("after 2 attempt(s)") != std::string::npos, std::string("an unreachable endpoint is retried, then fails: ") + e.what());
    }
    return failures ? 1 : 0;
  }
  std::cerr << "usage: s3_tool sign METHOD HOST PATH QUERY PAYLOAD_FILE AMZDATE | s3_tool check ENDPOINT BUCKET\n";
  return 2;
}
