// The lake's on-disk contract, shared by lake-export (writer), warehouse-loader and quality
// (readers).
//
//   <root>/<layer>/<dataset>/dt=<ds>/run=<run_id>/part-00000.csv   data files of one run
//   <root>/<layer>/<dataset>/dt=<ds>/_manifest.json                 the commit
//
// A partition is visible only through its manifest, written by atomic rename, so a reader sees
// the old partition or the new one, never half of either. Files of older runs are removed
// only after the new manifest is durable.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace strata {

struct ManifestFile {
  std::string path;  // relative to the partition dir
  int64_t rows = 0;
  int64_t bytes = 0;
  uint32_t crc32 = 0;
};

struct Manifest {
  std::string dataset, ds, run_id, layer = "bronze", format = "csv", compression = "none";
  std::vector<std::string> columns;  // data columns, after the _ds,_run_id lineage columns
  std::vector<ManifestFile> files;
  int64_t rows = 0;
  std::string committed_at;
  std::string watermark;  // JSON; see Batch.watermark. Empty for other datasets.
  // gold: the serving publication (serving.publications.version) whose content the partition
  // holds; 0 for other layers.
  int64_t publish_version = 0;
};

class LakeStore;

// A partition's key in a LakeStore: <layer>/<dataset>/dt=<ds>.
std::string PartitionKey(const std::string& layer, const std::string& dataset, const std::string& ds);
// nullopt when the partition has no committed manifest; InputError when it is malformed.
std::optional<Manifest> ReadManifest(LakeStore& store, const std::string& partition);

std::string PartitionDir(const std::string& root, const std::string& layer,
                         const std::string& dataset, const std::string& ds);
std::string ManifestPath(const std::string& partition_dir);

std::string ManifestToJson(const Manifest& m);
// Throws InputError naming `origin` when the manifest is malformed.
Manifest ManifestFromJson(const std::string& text, const std::string& origin);
// nullopt when the partition has no committed manifest.
std::optional<Manifest> ReadManifest(const std::string& partition_dir);

// A file written in pieces and made visible at once: a temp file beside `path`, fsync, rename,
// directory fsync on Commit(); destroyed without Commit(), it leaves nothing. Throws EnvError.
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void Write(const char* data, size_t size);
  void Commit();
  uint32_t crc32() const { return crc_; }
  int64_t bytes() const { return static_cast<int64_t>(bytes_); }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  uint32_t crc_ = 0;
  size_t bytes_ = 0;
};

// Writes via a temp file, fsync, rename and directory fsync. Throws EnvError.
void WriteFileAtomic(const std::string& path, const std::string& data);
uint32_t Crc32(const std::string& data);

}  // namespace strata
