// Where the lake's objects live: a local directory (default) or an S3-compatible bucket.
// Writers and readers of the lake (lake-export, warehouse-loader, quality) address objects by
// key, relative to the lake root ("bronze/orders/dt=2024-01-02/_manifest.json"), so the
// partition contract in common/lake.h holds on either backend:
//  * Put() and ObjectWriter::Commit() make an object visible whole or not at all (local:
//    temp file + fsync + rename; S3: a single PUT or a completed multipart upload), so a
//    manifest written last commits a partition atomically on both.
//  * Objects are read as streams; the loader's memory is bounded by a part, not a partition.
//  * Errors throw EnvError naming the object (path or s3://bucket/key), never a credential.
//
// The root is a path, or s3://bucket[/prefix]; for S3 the endpoint, region, addressing style
// and credentials come from the environment (STRATA_S3_ENDPOINT, STRATA_S3_REGION,
// STRATA_S3_PATH_STYLE, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
#pragma once
#include <cstdint>
#include <istream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace strata {

// An object written in pieces, visible only after Commit(); destroyed uncommitted, it leaves
// nothing behind.
class ObjectWriter {
 public:
  virtual ~ObjectWriter() = default;
  virtual void Write(const char* data, size_t size) = 0;
  virtual void Commit() = 0;
  uint32_t crc32() const { return crc_; }
  int64_t bytes() const { return bytes_; }

 protected:
  void Count(const char* data, size_t size);
  uint32_t crc_ = 0;
  int64_t bytes_ = 0;
};

class LakeStore {
 public:
  virtual ~LakeStore() = default;
  // The object's full name for messages and events: a path or s3://bucket/key.
  virtual std::string Where(const std::string& key) const = 0;
  virtual std::optional<std::string> Get(const std::string& key) = 0;  // nullopt: no such object
  virtual void Put(const std::string& key, const std::string& data) = 0;
  virtual std::unique_ptr<ObjectWriter> Create(const std::string& key) = 0;
  // Throws EnvError when the object is missing.
  virtual std::unique_ptr<std::istream> Open(const std::string& key) = 0;
  // Every key under `prefix` (a "directory" ending in '/'), relative to the lake root, sorted.
  virtual std::vector<std::string> List(const std::string& prefix) = 0;
  // Removes every object under `prefix` (ending in '/').
  virtual void RemoveAll(const std::string& prefix) = 0;
};

// Throws InputError when an s3:// root lacks its settings.
std::unique_ptr<LakeStore> OpenLakeStore(const std::string& root);

// Removes the run=<id>/ folders of a partition other than `keep_run` (older ones only when
// `older_only`): called after a new manifest is durable.
void RemoveOtherRuns(LakeStore& store, const std::string& partition, const std::string& keep_run, bool older_only);

}  // namespace strata
