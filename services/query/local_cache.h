// The query service's process-local copy of recent answers, in front of Redis: a hit costs a
// few microseconds and no network. Keys are the Redis keys (publish version included), so a
// publish makes older answers unreachable the moment the version watcher sees it.
#pragma once
#include <algorithm>
#include <chrono>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

namespace strata::query {

// Sharded to keep lock hold times short; a full shard is simply cleared (answers are cheap to
// fetch again). Thread-safe.
class LocalCache {
 public:
  explicit LocalCache(int ttl_seconds) : ttl_(std::chrono::seconds(ttl_seconds)) {}

  bool Get(const std::string& key, std::string* out) {
    Shard& s = ShardFor(key);
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.entries.find(key);
    if (it == s.entries.end() || std::chrono::steady_clock::now() > it->second.expires) return false;
    *out = it->second.bytes;
    return true;
  }

  // `ttl` bounds a realtime answer's age below the cache's own TTL.
  void Put(const std::string& key, const std::string& bytes, std::optional<std::chrono::milliseconds> ttl = std::nullopt) {
    Shard& s = ShardFor(key);
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.entries.size() >= kMaxPerShard) s.entries.clear();
    const std::chrono::steady_clock::duration life = ttl ? std::min<std::chrono::steady_clock::duration>(*ttl, ttl_) : ttl_;
    s.entries[key] = {bytes, std::chrono::steady_clock::now() + life};
  }

 private:
  static constexpr size_t kShards = 16, kMaxPerShard = 1024;
  struct Entry {
    std::string bytes;
    std::chrono::steady_clock::time_point expires;
  };
  struct Shard {
    std::mutex mu;
    std::unordered_map<std::string, Entry> entries;
  };
  Shard& ShardFor(const std::string& key) { return shards_[std::hash<std::string>{}(key) % kShards]; }
  std::chrono::steady_clock::duration ttl_;
  Shard shards_[kShards];
};

}  // namespace strata::query
