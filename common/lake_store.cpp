#include "common/lake_store.h"

#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "common/errors.h"
#include "common/lake.h"
#include "common/s3.h"

namespace strata {

namespace fs = std::filesystem;

void ObjectWriter::Count(const char* data, size_t size) {
  crc_ = static_cast<uint32_t>(::crc32(crc_, reinterpret_cast<const Bytef*>(data), static_cast<uInt>(size)));
  bytes_ += static_cast<int64_t>(size);
}

namespace {

class LocalWriter final : public ObjectWriter {
 public:
  explicit LocalWriter(const std::string& path) : file_(path) {}
  void Write(const char* data, size_t size) override {
    file_.Write(data, size);
    Count(data, size);
  }
  void Commit() override { file_.Commit(); }

 private:
  AtomicFile file_;
};

class LocalStore final : public LakeStore {
 public:
  explicit LocalStore(std::string root) : root_(std::move(root)) {}
  std::string Where(const std::string& key) const override { return root_ + "/" + key; }
  std::optional<std::string> Get(const std::string& key) override {
    std::ifstream in(Where(key), std::ios::binary);
    if (!in) return std::nullopt;
    std::ostringstream ss;
    ss << in.rdbuf();
    if (in.bad()) throw EnvError("cannot read " + Where(key));
    return ss.str();
  }
  void Put(const std::string& key, const std::string& data) override { WriteFileAtomic(Where(key), data); }
  std::unique_ptr<ObjectWriter> Create(const std::string& key) override {
    return std::make_unique<LocalWriter>(Where(key));
  }
  std::unique_ptr<std::istream> Open(const std::string& key) override {
    auto in = std::make_unique<std::ifstream>(Where(key), std::ios::binary);
    if (!*in) throw EnvError("cannot open " + Where(key));
    return in;
  }
  std::vector<std::string> List(const std::string& prefix) override {
    std::vector<std::string> out;
    std::error_code ec;
    const fs::path base = Where(prefix);
    for (auto it = fs::recursive_directory_iterator(base, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec))
      if (it->is_regular_file()) out.push_back(fs::relative(it->path(), root_).string());
    std::sort(out.begin(), out.end());
    return out;
  }
  void RemoveAll(const std::string& prefix) override {
    std::string path = Where(prefix);
    while (!path.empty() && path.back() == '/') path.pop_back();
    std::error_code ec;
    fs::remove_all(path, ec);
  }

 private:
  std::string root_;
};

class S3Writer final : public ObjectWriter {
 public:
  S3Writer(S3Client& s3, std::string key) : s3_(s3), key_(std::move(key)) {}
  ~S3Writer() override {
    if (!upload_id_.empty() && !committed_) s3_.AbortMultipart(key_, upload_id_);
  }
  void Write(const char* data, size_t size) override {
    buffer_.append(data, size);
    Count(data, size);
    // Memory holds one part: past it, the object goes up as a multipart upload.
    if (buffer_.size() >= s3_.config().part_size) {
      if (upload_id_.empty()) upload_id_ = s3_.StartMultipart(key_);
      etags_.push_back(s3_.UploadPart(key_, upload_id_, static_cast<int>(etags_.size()) + 1, buffer_));
      buffer_.clear();
    }
  }
  void Commit() override {
    if (upload_id_.empty()) {
      s3_.Put(key_, buffer_);
    } else {
      if (!buffer_.empty()) etags_.push_back(s3_.UploadPart(key_, upload_id_, static_cast<int>(etags_.size()) + 1, buffer_));
      s3_.CompleteMultipart(key_, upload_id_, etags_);
    }
    committed_ = true;
  }

 private:
  S3Client& s3_;
  std::string key_, upload_id_, buffer_;
  std::vector<std::string> etags_;
  bool committed_ = false;
};

class S3Store final : public LakeStore {
 public:
  S3Store(S3Config c, std::string prefix) : bucket_(c.bucket), prefix_(std::move(prefix)), s3_(std::move(c)) {}
  std::string Where(const std::string& key) const override { return "s3://" + bucket_ + "/" + Full(key); }
  std::optional<std::string> Get(const std::string& key) override { return s3_.Get(Full(key)); }
  void Put(const std::string& key, const std::string& data) override { s3_.Put(Full(key), data); }
  std::unique_ptr<ObjectWriter> Create(const std::string& key) override {
    return std::make_unique<S3Writer>(s3_, Full(key));
  }
  std::unique_ptr<std::istream> Open(const std::string& key) override {
    // Lake parts are bounded by the batch size, so one part in memory keeps the reader flat
    // in the partition's size.
    auto body = s3_.Get(Full(key));
    if (!body) throw EnvError("no such object " + Where(key));
    return std::make_unique<std::istringstream>(std::move(*body));
  }
  std::vector<std::string> List(const std::string& prefix) override {
    std::vector<std::string> out;
    for (auto& k : s3_.List(Full(prefix))) out.push_back(prefix_.empty() ? k : k.substr(prefix_.size() + 1));
    std::sort(out.begin(), out.end());
    return out;
  }
  void RemoveAll(const std::string& prefix) override {
    for (const auto& k : s3_.List(Full(prefix))) s3_.Delete(k);
  }

 private:
  std::string Full(const std::string& key) const { return prefix_.empty() ? key : prefix_ + "/" + key; }
  std::string bucket_, prefix_;
  S3Client s3_;
};

std::string Env(const char* name, const std::string& fallback = "") {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

}  // namespace

std::unique_ptr<LakeStore> OpenLakeStore(const std::string& root) {
  if (root.rfind("s3://", 0) != 0) return std::make_unique<LocalStore>(root);
  std::string rest = root.substr(5);
  while (!rest.empty() && rest.back() == '/') rest.pop_back();
  const size_t slash = rest.find('/');
  S3Config c;
  c.bucket = rest.substr(0, slash);
  const std::string prefix = slash == std::string::npos ? "" : rest.substr(slash + 1);
  if (c.bucket.empty()) throw InputError("lake_root \"" + root + "\": expected s3://bucket[/prefix]");
  c.endpoint = Env("STRATA_S3_ENDPOINT", c.endpoint);
  c.region = Env("STRATA_S3_REGION", Env("AWS_REGION", c.region));
  const std::string style = Env("STRATA_S3_PATH_STYLE", "true");
  if (style != "true" && style != "false")
    throw InputError("STRATA_S3_PATH_STYLE: expected true or false, got \"" + style + "\"");
  c.path_style = style == "true";
  c.access_key = Env("AWS_ACCESS_KEY_ID");
  c.secret_key = Env("AWS_SECRET_ACCESS_KEY");
  if (c.access_key.empty() || c.secret_key.empty())
    throw InputError("lake_root \"" + root + "\": AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set for an S3 lake");
  return std::make_unique<S3Store>(std::move(c), prefix);
}

void RemoveOtherRuns(LakeStore& store, const std::string& partition, const std::string& keep_run, bool older_only) {
  std::set<std::string> runs;
  for (const auto& key : store.List(partition + "/")) {
    const std::string rel = key.substr(partition.size() + 1);
    if (rel.rfind("run=", 0) == 0) runs.insert(rel.substr(4, rel.find('/') - 4));
  }
  for (const auto& run : runs)
    if (run != keep_run && (!older_only || run < keep_run)) store.RemoveAll(partition + "/run=" + run + "/");
}

}  // namespace strata
