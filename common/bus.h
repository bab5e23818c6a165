// The message bus: Redis Streams through hiredis.
//
// Streams:
//   strata:batches     record batches (protobuf Batch in field "batch"); group "lake-export"
//   strata:events      progress facts (protobuf Event in field "event"); group "controller"
//   strata:deadletter  records that could not be ingested: dataset, ds, run_id, reason,
//                      position, record
//   strata:cdc         change-data-capture micro-batches; group "warehouse-loader"
//   strata:extract:<pipeline>  shards of sharded extractions; group "ingest" (every ingest
//                      worker of that pipeline)
// Delivery is at-least-once: a consumer acks an entry only after its output is durable and
// reclaims (XAUTOCLAIM) entries a dead consumer left pending.
//
// A RedisClient is one connection guarded by a mutex: cheap calls may share it, but a
// consumer that blocks in XREADGROUP should own its client. A broken connection is re-opened
// and the command retried once; failures after that throw EnvError. Commands sent through here
// must therefore be safe to repeat (every strata command is: reads, SET, XADD of idempotent
// batches, XACK).
#pragma once
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

struct redisContext;

namespace strata {

inline constexpr const char* kBatchStream = "strata:batches";
inline constexpr const char* kEventStream = "strata:events";
inline constexpr const char* kDeadLetterStream = "strata:deadletter";
inline constexpr const char* kCdcStream = "strata:cdc";  // ChangeBatch in field "batch"; group "warehouse-loader"
inline constexpr const char* kExtractStream = "strata:extract";  // + ":<pipeline>"; ExtractShard in "shard"; group "ingest"
// The warehouse's published version (serving.publications.version, never a Redis counter, so
// it keeps growing across Redis restarts); also the channel its changes are PUBLISHed on.
inline constexpr const char* kPublishVersionKey = "strata:serving_version";

struct RedisReply {
  enum Type { kNil, kString, kInteger, kArray, kStatus } type = kNil;
  std::string str;
  long long integer = 0;
  std::vector<RedisReply> elements;
};

// A Redis Cluster is found by itself: the URL names one node or several seed nodes
// (redis://h1:p1,h2:p2), and when they answer CLUSTER SLOTS each command goes to the node
// owning its key's slot (redis_cluster.h), following MOVED (the slot map is re-read) and ASK
// (one ASKING hop); a node that stops answering makes it re-read the map from any node it
// knows, so a failover costs the caller a retry, not an error. A stream lives on one node:
// strata's streams are sharded by name, not within one stream.
class RedisClient {
 public:
  explicit RedisClient(std::string url, int timeout_ms = 5000);
  ~RedisClient();
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  // Runs one command. Error replies throw EnvError carrying Redis's message.
  RedisReply Command(const std::vector<std::string>& argv);
  // True if PING succeeds (never throws).
  bool Ping();
  // True if the server is a cluster node (asks it first if no command went out yet; throws
  // EnvError when no seed answers). A script may then touch only keys of one slot.
  bool cluster();

 private:
  struct Node;
  Node& NodeLocked(const std::string& host, int port);
  void* SendLocked(Node& node, const std::vector<std::string>& argv, bool asking);
  void ProbeLocked();
  bool RefreshSlotsLocked();
  std::vector<std::pair<std::string, int>> seeds_;
  int timeout_ms_;
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<Node>> nodes_;  // "host:port" -> connection
  bool probed_ = false;
  bool cluster_ = false;
  std::vector<Node*> slots_;  // slot -> owner, when cluster_
};

struct StreamEntry {
  std::string id;
  std::map<std::string, std::string> fields;
};

class Bus {
 public:
  explicit Bus(const std::string& redis_url, int timeout_ms = 5000);

  std::string Add(const std::string& stream, const std::map<std::string, std::string>& fields);
  // XGROUP CREATE ... MKSTREAM from the stream's start; an existing group is fine.
  void EnsureGroup(const std::string& stream, const std::string& group);
  std::vector<StreamEntry> ReadGroup(const std::string& stream, const std::string& group,
                                     const std::string& consumer, int count, int block_ms);
  // Takes over entries pending longer than min_idle_ms in the group (a dead consumer's work).
  std::vector<StreamEntry> AutoClaim(const std::string& stream, const std::string& group,
                                     const std::string& consumer, long long min_idle_ms, int count);
  // IDs of entries delivered in the group and not yet acknowledged (any consumer's), oldest
  // first, up to and including `max_id`, at most `count` of them (XPENDING's extended form).
  std::vector<std::string> PendingUpTo(const std::string& stream, const std::string& group, const std::string& max_id,
                                       int count);
  void Ack(const std::string& stream, const std::string& group, const std::string& id);
  void Delete(const std::string& stream, const std::string& id);
  long long Length(const std::string& stream);

  RedisClient& client() { return client_; }

 private:
  RedisClient client_;
};

// Raises the integer in `key` to `version` unless it already holds as much, and PUBLISHes the
// new value on the channel of the same name; one atomic script, so concurrent announcers never
// move it backwards. Returns the value the key holds afterwards. Throws EnvError.
long long AnnounceVersion(RedisClient& redis, const std::string& key, long long version);

// Follows an integer kept in a Redis key whose writers also PUBLISH the new value on a channel
// of the same name (strata:serving_version). Pushes arrive within a round trip; the key is
// also re-read every second so a missed message costs at most a second. known() is false
// until the first read succeeds and again while Redis is unreachable. version() never goes
// down.
//
// With an `authority` (the query service reads serving.publications), the key is re-derived
// from it: when the key is missing (Redis restarted and lost it) it is announced from the
// authority before it counts as known, and every few seconds a higher authoritative value
// (an announcement that never reached Redis) is announced.
class VersionWatcher {
 public:
  using Authority = std::function<std::optional<long long>()>;
  VersionWatcher(std::string redis_url, std::string key, Authority authority = nullptr);
  ~VersionWatcher();
  void Start();
  void Stop();
  bool known() const { return known_.load(); }
  long long version() const { return version_.load(); }
  // Lets a caller that learnt a newer value elsewhere (e.g. from a cache lookup) record it.
  void Observe(long long v);

 private:
  void Loop();
  std::string url_, key_;
  Authority authority_;
  std::atomic<long long> version_{0};
  std::atomic<bool> known_{false};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Parses the entries of an XREADGROUP/XRANGE-style array reply.
std::vector<StreamEntry> ParseEntries(const RedisReply& entries);

}  // namespace strata
