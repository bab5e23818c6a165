// Redis Cluster routing, as pure functions: which hash slot a key lives in, which argument of
// a command is its key, and what a MOVED/ASK redirection says. RedisClient (bus.h) uses them
// to send each command to the node that owns its key; they need no network, so they are
// unit-tested against the values of the Redis Cluster specification.
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace strata {

inline constexpr int kClusterSlots = 16384;

// CRC16 (XMODEM) of the key's hash tag — the part between the first '{' and the next '}' when
// that part is not empty — or of the whole key, modulo 16384. Keys that share a tag share a slot.
int KeySlot(std::string_view key);

// The key a command is routed by, for the commands strata sends: the first key argument
// (XREADGROUP's first stream, EVAL's first key). nullopt for a command without a key (PING),
// which any node answers.
std::optional<std::string> RoutingKey(const std::vector<std::string>& argv);

struct RedisNode {
  std::string host;
  int port = 6379;
  std::string Name() const { return host + ":" + std::to_string(port); }
};

// "redis://host:port[,host:port...][/db]": one node, or several seed nodes of a cluster (any
// one that answers gives the slot map). Throws InputError naming the bad part.
std::vector<RedisNode> ParseRedisUrl(const std::string& url);

// "MOVED 3999 127.0.0.1:6381" / "ASK 3999 127.0.0.1:6381" (an error reply): the slot now lives
// on, or is being migrated to, that node. nullopt for any other error.
struct Redirect {
  bool ask = false;
  int slot = 0;
  RedisNode node;
};
std::optional<Redirect> ParseRedirect(std::string_view error);

}  // namespace strata
