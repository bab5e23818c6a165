#include "common/lake.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/errors.h"
#include "common/lake_store.h"

namespace strata {

namespace fs = std::filesystem;

std::string PartitionDir(const std::string& root, const std::string& layer,
                         const std::string& dataset, const std::string& ds) {
  return root + "/" + layer + "/" + dataset + "/dt=" + ds;
}

std::string ManifestPath(const std::string& dir) { return dir + "/_manifest.json"; }

std::string PartitionKey(const std::string& layer, const std::string& dataset, const std::string& ds) {
  return layer + "/" + dataset + "/dt=" + ds;
}

std::optional<Manifest> ReadManifest(LakeStore& store, const std::string& partition) {
  const std::string key = ManifestPath(partition);
  const auto text = store.Get(key);
  if (!text) return std::nullopt;
  return ManifestFromJson(*text, store.Where(key));
}

std::string ManifestToJson(const Manifest& m) {
  nlohmann::json j;
  j["dataset"] = m.dataset;
  j["ds"] = m.ds;
  j["run_id"] = m.run_id;
  j["layer"] = m.layer;
  j["format"] = m.format;
  j["compression"] = m.compression;
  j["columns"] = m.columns;
  j["rows"] = m.rows;
  j["committed_at"] = m.committed_at;
  if (!m.watermark.empty()) j["watermark"] = nlohmann::json::parse(m.watermark);
  if (m.publish_version > 0) j["publish_version"] = m.publish_version;
  j["files"] = nlohmann::json::array();
  for (const auto& f : m.files)
    j["files"].push_back({{"path", f.path}, {"rows", f.rows}, {"bytes", f.bytes}, {"crc32", f.crc32}});
  return j.dump(2) + "\n";
}

Manifest ManifestFromJson(const std::string& text, const std::string& origin) {
  try {
    const auto j = nlohmann::json::parse(text);
    Manifest m;
    m.dataset = j.at("dataset").get<std::string>();
    m.ds = j.at("ds").get<std::string>();
    m.run_id = j.at("run_id").get<std::string>();
    m.layer = j.at("layer").get<std::string>();
    m.format = j.at("format").get<std::string>();
    m.compression = j.value("compression", "none");
    m.columns = j.at("columns").get<std::vector<std::string>>();
    m.rows = j.at("rows").get<int64_t>();
    m.committed_at = j.value("committed_at", "");
    if (j.contains("watermark")) m.watermark = j["watermark"].dump();
    m.publish_version = j.value("publish_version", int64_t{0});
    for (const auto& f : j.at("files"))
      m.files.push_back({f.at("path").get<std::string>(), f.at("rows").get<int64_t>(),
                         f.at("bytes").get<int64_t>(), f.at("crc32").get<uint32_t>()});
    return m;
  } catch (const std::exception& e) {
    throw InputError("manifest " + origin + ": " + e.what());
  }
}

std::optional<Manifest> ReadManifest(const std::string& dir) {
  const std::string path = ManifestPath(dir);
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  return ManifestFromJson(ss.str(), path);
}

namespace {
// Two writers of one path in one process (a resumed attempt beside the abandoned one) must not
// share a temporary file: each rename would find the other's gone.
std::string TempName(const std::string& path) {
  static std::atomic<unsigned long> next{0};
  return path + ".tmp." + std::to_string(getpid()) + "." + std::to_string(next.fetch_add(1));
}
}  // namespace

AtomicFile::AtomicFile(const std::string& path) : path_(path), tmp_(TempName(path)) {
  const fs::path target(path);
  std::error_code ec;
  fs::create_directories(target.parent_path(), ec);
  if (ec) throw EnvError("mkdir " + target.parent_path().string() + ": " + ec.message());
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd_ < 0) throw EnvError("open " + tmp_ + ": " + std::strerror(errno));
  crc_ = static_cast<uint32_t>(::crc32(0L, Z_NULL, 0));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::Write(const char* data, size_t size) {
  crc_ = static_cast<uint32_t>(::crc32(crc_, reinterpret_cast<const Bytef*>(data), static_cast<uInt>(size)));
  bytes_ += size;
  size_t off = 0;
  while (off < size) {
    const ssize_t n = ::write(fd_, data + off, size - off);
    if (n < 0) throw EnvError("write " + tmp_ + ": " + std::strerror(errno));
    off += static_cast<size_t>(n);
  }
}

void AtomicFile::Commit() {
  const int fd = fd_;
  fd_ = -1;
  if (::fsync(fd) != 0 || ::close(fd) != 0) throw EnvError("fsync " + tmp_ + ": " + std::strerror(errno));
  if (::rename(tmp_.c_str(), path_.c_str()) != 0)
    throw EnvError("rename " + tmp_ + " -> " + path_ + ": " + std::strerror(errno));
  const int dfd = ::open(fs::path(path_).parent_path().c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void WriteFileAtomic(const std::string& path, const std::string& data) {
  AtomicFile f(path);
  f.Write(data.data(), data.size());
  f.Commit();
}

uint32_t Crc32(const std::string& data) {
  return static_cast<uint32_t>(
      ::crc32(0L, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(data.size())));
}

}  // namespace strata
