#include "common/bus.h"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <chrono>

#include "common/errors.h"
#include "common/redis_cluster.h"

namespace strata {

namespace {
RedisReply Convert(const redisReply* r) {
  RedisReply out;
  if (!r) return out;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      out.type = RedisReply::kString;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = RedisReply::kStatus;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = RedisReply::kInteger;
      out.integer = r->integer;
      break;
    case REDIS_REPLY_ARRAY:
      out.type = RedisReply::kArray;
      out.elements.reserve(r->elements);
      for (size_t i = 0; i < r->elements; ++i) out.elements.push_back(Convert(r->element[i]));
      break;
    default:
      break;
  }
  return out;
}
}  // namespace

struct RedisClient::Node {
  std::string host;
  int port = 0;
  redisContext* ctx = nullptr;
  std::string Name() const { return host + ":" + std::to_string(port); }
};

RedisClient::RedisClient(std::string url, int timeout_ms) : timeout_ms_(timeout_ms) {
  // Config validated the shape already; a bad URL here is a programming error, reported as such.
  for (const RedisNode& n : ParseRedisUrl(url)) seeds_.emplace_back(n.host, n.port);
}

RedisClient::~RedisClient() {
  for (auto& [name, node] : nodes_)
    if (node->ctx) redisFree(node->ctx);
}

RedisClient::Node& RedisClient::NodeLocked(const std::string& host, int port) {
  auto& slot = nodes_[host + ":" + std::to_string(port)];
  if (!slot) {
    slot = std::make_unique<Node>();
    slot->host = host;
    slot->port = port;
  }
  return *slot;
}

// Sends one command to one node; a broken connection (e.g. Redis restarted since the last
// call) is re-opened and the command sent once more, so one restart costs callers nothing.
// Returns the reply (never null) or throws EnvError.
void* RedisClient::SendLocked(Node& node, const std::vector<std::string>& argv, bool asking) {
  std::vector<const char*> args;
  std::vector<size_t> lens;
  args.reserve(argv.size());
  lens.reserve(argv.size());
  for (const auto& a : argv) {
    args.push_back(a.data());
    lens.push_back(a.size());
  }
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (!node.ctx) {
      timeval tv{timeout_ms_ / 1000, (timeout_ms_ % 1000) * 1000};
      redisContext* c = redisConnectWithTimeout(node.host.c_str(), node.port, tv);
      if (!c || c->err) {
        const std::string why = c ? c->errstr : "out of memory";
        if (c) redisFree(c);
        throw EnvError("redis " + node.Name() + ": " + why);
      }
      // Blocking reads (XREADGROUP BLOCK) must not hit the socket timeout: allow block + slack.
      timeval rtv{timeout_ms_ / 1000 + 30, 0};
      redisSetTimeout(c, rtv);
      node.ctx = c;
    }
    if (asking) {
      auto* ok = static_cast<redisReply*>(redisCommand(node.ctx, "ASKING"));
      if (ok) freeReplyObject(ok);
    }
    auto* r = static_cast<redisReply*>(
        redisCommandArgv(node.ctx, static_cast<int>(argv.size()), args.data(), lens.data()));
    if (r) return r;
    const std::string why = node.ctx->errstr;
    redisFree(node.ctx);
    node.ctx = nullptr;
    if (attempt == 1) throw EnvError("redis " + node.Name() + " " + argv[0] + ": " + why);
  }
  return nullptr;  // unreachable
}

// Reads the slot map from any node known (seeds first). False when none answered with one.
bool RedisClient::RefreshSlotsLocked() {
  std::vector<std::pair<std::string, int>> ask = seeds_;
  for (const auto& [name, node] : nodes_) ask.emplace_back(node->host, node->port);
  for (const auto& [host, port] : ask) {
    redisReply* r = nullptr;
    try {
      r = static_cast<redisReply*>(SendLocked(NodeLocked(host, port), {"CLUSTER", "SLOTS"}, false));
    } catch (const EnvError&) {
      continue;
    }
    if (r->type != REDIS_REPLY_ARRAY) {
      freeReplyObject(r);
      continue;
    }
    std::vector<Node*> map(kClusterSlots, nullptr);
    for (size_t i = 0; i < r->elements; ++i) {
      const redisReply* range = r->element[i];
      if (range->type != REDIS_REPLY_ARRAY || range->elements < 3) continue;
      const redisReply* master = range->element[2];
      if (master->type != REDIS_REPLY_ARRAY || master->elements < 2) continue;
      // An empty host means "the node you asked".
      std::string mhost(master->element[0]->str ? master->element[0]->str : "", master->element[0]->len);
      if (mhost.empty() || mhost == "?") mhost = host;
      Node* owner = &NodeLocked(mhost, static_cast<int>(master->element[1]->integer));
      for (long long s = range->element[0]->integer; s <= range->element[1]->integer && s < kClusterSlots; ++s)
        map[static_cast<size_t>(s)] = owner;
    }
    freeReplyObject(r);
    slots_ = std::move(map);
    return true;
  }
  return false;
}

void RedisClient::ProbeLocked() {
  if (probed_) return;
  // The first seed that answers decides: a cluster node answers CLUSTER SLOTS, a standalone
  // server refuses it ("cluster support disabled").
  std::string last_error;
  for (const auto& [host, port] : seeds_) {
    redisReply* r = nullptr;
    try {
      r = static_cast<redisReply*>(SendLocked(NodeLocked(host, port), {"CLUSTER", "SLOTS"}, false));
    } catch (const EnvError& e) {
      last_error = e.what();
      continue;
    }
    const bool cluster = r->type == REDIS_REPLY_ARRAY;
    freeReplyObject(r);
    cluster_ = cluster && RefreshSlotsLocked();
    probed_ = true;
    return;
  }
  throw EnvError(last_error);
}

RedisReply RedisClient::Command(const std::vector<std::string>& argv) {
  std::lock_guard<std::mutex> lock(mu_);
  ProbeLocked();
  Node* target = &NodeLocked(seeds_[0].first, seeds_[0].second);
  std::optional<std::string> key;
  if (cluster_) {
    key = RoutingKey(argv);
    if (key && slots_[static_cast<size_t>(KeySlot(*key))]) target = slots_[static_cast<size_t>(KeySlot(*key))];
  }
  bool asking = false;
  // A failover (a master gone, its replica not yet promoted: connection refused, CLUSTERDOWN,
  // TRYAGAIN) lasts about the cluster's node timeout: commands wait it out, re-reading the slot
  // map, for up to kFailoverWindow before the error reaches the caller.
  constexpr auto kFailoverWindow = std::chrono::seconds(20);
  const auto deadline = std::chrono::steady_clock::now() + kFailoverWindow;
  auto wait_and_remap = [&](int attempt) {
    if (!cluster_ || std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min(100 * (1 << std::min(attempt, 4)), 1000)));
    RefreshSlotsLocked();
    Node* owner = key ? slots_[static_cast<size_t>(KeySlot(*key))] : nullptr;
    if (owner) target = owner;
    asking = false;
    return true;
  };
  for (int hop = 0, waits = 0;; ++hop) {
    redisReply* r = nullptr;
    try {
      r = static_cast<redisReply*>(SendLocked(*target, argv, asking));
    } catch (const EnvError&) {
      if (!wait_and_remap(waits++)) throw;
      continue;
    }
    if (r->type == REDIS_REPLY_ERROR) {
      const std::string why(r->str, r->len);
      freeReplyObject(r);
      if (cluster_ && (why.rfind("CLUSTERDOWN", 0) == 0 || why.rfind("TRYAGAIN", 0) == 0)) {
        if (wait_and_remap(waits++)) continue;
      }
      const auto redirect = cluster_ && hop < 16 ? ParseRedirect(why) : std::nullopt;
      if (!redirect) throw EnvError("redis " + argv[0] + ": " + why);
      Node& to = NodeLocked(redirect->node.host, redirect->node.port);
      if (!redirect->ask) {
        // The slot moved for good: remember where, and re-read the whole map (others moved too).
        if (!RefreshSlotsLocked()) slots_[static_cast<size_t>(redirect->slot)] = &to;
      }
      target = &to;
      asking = redirect->ask;
      continue;
    }
    RedisReply out = Convert(r);
    freeReplyObject(r);
    return out;
  }
}

bool RedisClient::cluster() {
  std::lock_guard<std::mutex> lock(mu_);
  ProbeLocked();
  return cluster_;
}

bool RedisClient::Ping() {
  try {
    return Command({"PING"}).str == "PONG";
  } catch (const EnvError&) {
    return false;
  }
}

std::vector<StreamEntry> ParseEntries(const RedisReply& entries) {
  std::vector<StreamEntry> out;
  for (const auto& e : entries.elements) {
    if (e.elements.size() < 2) continue;  // deleted entry (nil fields) in a claim reply
    StreamEntry se;
    se.id = e.elements[0].str;
    const auto& kv = e.elements[1].elements;
    for (size_t i = 0; i + 1 < kv.size(); i += 2) se.fields[kv[i].str] = kv[i + 1].str;
    out.push_back(std::move(se));
  }
  return out;
}

long long AnnounceVersion(RedisClient& redis, const std::string& key, long long version) {
  static const char* kScript =
      "local cur = tonumber(redis.call('GET', KEYS[1]) or '-1') "
      "local v = tonumber(ARGV[1]) "
      "if v > cur then redis.call('SET', KEYS[1], ARGV[1]) redis.call('PUBLISH', KEYS[1], ARGV[1]) return v end "
      "return cur";
  return redis.Command({"EVAL", kScript, "1", key, std::to_string(version)}).integer;
}

VersionWatcher::VersionWatcher(std::string redis_url, std::string key, Authority authority)
    : url_(std::move(redis_url)), key_(std::move(key)), authority_(std::move(authority)) {}

VersionWatcher::~VersionWatcher() { Stop(); }

void VersionWatcher::Start() { thread_ = std::thread([this] { Loop(); }); }

void VersionWatcher::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void VersionWatcher::Observe(long long v) {
  long long cur = version_.load();
  while (v > cur && !version_.compare_exchange_weak(cur, v)) {
  }
}

void VersionWatcher::Loop() {
  RedisClient probe(url_, 500);
  // Published messages reach every node of a cluster: any seed that answers will do, the next
  // one when it stops answering.
  const std::vector<RedisNode> seeds = ParseRedisUrl(url_);
  size_t next_seed = 0;
  auto last_authority = std::chrono::steady_clock::time_point{};
  while (!stop_) {
    const RedisNode& seed = seeds[next_seed % seeds.size()];
    // Subscribe first, then read the key: a bump between the two is seen either way.
    timeval connect_tv{0, 500000};
    redisContext* c = redisConnectWithTimeout(seed.host.c_str(), seed.port, connect_tv);
    if (!c || c->err) {
      if (c) redisFree(c);
      ++next_seed;
      known_ = false;
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      continue;
    }
    timeval read_tv{1, 0};  // wake up every second to re-read the key and notice Stop()
    redisSetTimeout(c, read_tv);
    auto* sub = static_cast<redisReply*>(redisCommand(c, "SUBSCRIBE %s", key_.c_str()));
    if (sub) freeReplyObject(sub);
    try {
      const RedisReply v = probe.Command({"GET", key_});
      const auto now = std::chrono::steady_clock::now();
      if (v.type == RedisReply::kString) {
        Observe(std::stoll(v.str));
        known_ = true;
      } else if (!authority_) {
        known_ = true;  // no writer yet: version 0
      } else {
        // The key is gone (Redis lost its data): derive it again before trusting anything.
        const std::optional<long long> a = authority_();
        last_authority = now;
        if (a) Observe(AnnounceVersion(probe, key_, *a));
        known_ = a.has_value();
      }
      if (authority_ && now - last_authority >= std::chrono::seconds(5)) {
        last_authority = now;
        const std::optional<long long> a = authority_();
        if (a && *a > version_.load()) Observe(AnnounceVersion(probe, key_, *a));
      }
    } catch (const std::exception&) {
      known_ = false;
    }
    while (!stop_ && sub) {
      void* raw = nullptr;
      if (redisGetReply(c, &raw) != REDIS_OK) break;  // timeout or broken: reconnect and re-read
      auto* msg = static_cast<redisReply*>(raw);
      if (msg && msg->type == REDIS_REPLY_ARRAY && msg->elements == 3 && msg->element[2]->type == REDIS_REPLY_STRING)
        Observe(std::stoll(std::string(msg->element[2]->str, msg->element[2]->len)));
      if (msg) freeReplyObject(msg);
    }
    redisFree(c);
  }
}

Bus::Bus(const std::string& redis_url, int timeout_ms) : client_(redis_url, timeout_ms) {}

std::string Bus::Add(const std::string& stream, const std::map<std::string, std::string>& fields) {
  std::vector<std::string> argv{"XADD", stream, "*"};
  for (const auto& [k, v] : fields) {
    argv.push_back(k);
    argv.push_back(v);
  }
  return client_.Command(argv).str;
}

void Bus::EnsureGroup(const std::string& stream, const std::string& group) {
  try {
    client_.Command({"XGROUP", "CREATE", stream, group, "0", "MKSTREAM"});
  } catch (const EnvError& e) {
    if (std::string(e.what()).find("BUSYGROUP") == std::string::npos) throw;
  }
}

std::vector<StreamEntry> Bus::ReadGroup(const std::string& stream, const std::string& group,
                                        const std::string& consumer, int count, int block_ms) {
  const RedisReply r = client_.Command({"XREADGROUP", "GROUP", group, consumer, "COUNT",
                                        std::to_string(count), "BLOCK", std::to_string(block_ms),
                                        "STREAMS", stream, ">"});
  if (r.type != RedisReply::kArray || r.elements.empty()) return {};
  return ParseEntries(r.elements[0].elements.at(1));
}

std::vector<StreamEntry> Bus::AutoClaim(const std::string& stream, const std::string& group,
                                        const std::string& consumer, long long min_idle_ms,
                                        int count) {
  const RedisReply r = client_.Command({"XAUTOCLAIM", stream, group, consumer,
                                        std::to_string(min_idle_ms), "0", "COUNT",
                                        std::to_string(count)});
  if (r.type != RedisReply::kArray || r.elements.size() < 2) return {};
  return ParseEntries(r.elements[1]);
}

std::vector<std::string> Bus::PendingUpTo(const std::string& stream, const std::string& group,
                                          const std::string& max_id, int count) {
  const RedisReply r = client_.Command({"XPENDING", stream, group, "-", max_id, std::to_string(count)});
  std::vector<std::string> ids;
  if (r.type != RedisReply::kArray) return ids;
  for (const auto& e : r.elements)
    if (e.type == RedisReply::kArray && !e.elements.empty()) ids.push_back(e.elements[0].str);
  return ids;
}

void Bus::Ack(const std::string& stream, const std::string& group, const std::string& id) {
  client_.Command({"XACK", stream, group, id});
}

void Bus::Delete(const std::string& stream, const std::string& id) {
  client_.Command({"XDEL", stream, id});
}

long long Bus::Length(const std::string& stream) { return client_.Command({"XLEN", stream}).integer; }

}  // namespace strata
