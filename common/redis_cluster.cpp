#include "common/redis_cluster.h"

#include <cstdint>

#include "common/errors.h"

namespace strata {

namespace {
uint16_t Crc16(std::string_view s) {
  uint16_t crc = 0;
  for (unsigned char c : s) {
    crc ^= static_cast<uint16_t>(c) << 8;
    for (int i = 0; i < 8; ++i) crc = (crc & 0x8000) ? static_cast<uint16_t>((crc << 1) ^ 0x1021) : static_cast<uint16_t>(crc << 1);
  }
  return crc;
}

bool Is(const std::string& a, const char* b) {
  if (a.size() != std::char_traits<char>::length(b)) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::toupper(static_cast<unsigned char>(a[i])) != b[i]) return false;
  return true;
}

RedisNode ParseNode(const std::string& part, const std::string& what) {
  const auto colon = part.rfind(':');
  RedisNode n;
  n.host = part.substr(0, colon);
  if (n.host.empty()) throw InputError(what + ": empty host in \"" + part + "\"");
  if (colon != std::string::npos) {
    const std::string port = part.substr(colon + 1);
    if (port.empty() || port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5 ||
        std::stoi(port) < 1 || std::stoi(port) > 65535)
      throw InputError(what + ": bad port in \"" + part + "\"");
    n.port = std::stoi(port);
  }
  return n;
}
}  // namespace

int KeySlot(std::string_view key) {
  const auto open = key.find('{');
  if (open != std::string_view::npos) {
    const auto close = key.find('}', open + 1);
    if (close != std::string_view::npos && close > open + 1) key = key.substr(open + 1, close - open - 1);
  }
  return Crc16(key) % kClusterSlots;
}

std::optional<std::string> RoutingKey(const std::vector<std::string>& argv) {
  if (argv.size() < 2) return std::nullopt;
  const std::string& cmd = argv[0];
  if (Is(cmd, "PING") || Is(cmd, "INFO") || Is(cmd, "CLUSTER")) return std::nullopt;
  if (Is(cmd, "XGROUP") || Is(cmd, "XINFO")) return argv.size() > 2 ? std::optional<std::string>(argv[2]) : std::nullopt;
  if (Is(cmd, "EVAL") || Is(cmd, "EVALSHA"))
    return argv.size() > 3 && argv[2] != "0" ? std::optional<std::string>(argv[3]) : std::nullopt;
  if (Is(cmd, "XREAD") || Is(cmd, "XREADGROUP")) {
    for (size_t i = 1; i + 1 < argv.size(); ++i)
      if (Is(argv[i], "STREAMS")) return argv[i + 1];
    return std::nullopt;
  }
  return argv[1];
}

std::vector<RedisNode> ParseRedisUrl(const std::string& url) {
  const std::string what = "redis url \"" + url + "\"";
  if (url.rfind("redis://", 0) != 0) throw InputError(what + ": expected redis://host:port[,host:port...]");
  std::string rest = url.substr(8);
  rest = rest.substr(0, rest.find('/'));
  std::vector<RedisNode> out;
  size_t start = 0;
  for (;;) {
    const auto comma = rest.find(',', start);
    out.push_back(ParseNode(rest.substr(start, comma - start), what));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

std::optional<Redirect> ParseRedirect(std::string_view error) {
  Redirect r;
  if (error.rfind("MOVED ", 0) == 0) {
    error.remove_prefix(6);
  } else if (error.rfind("ASK ", 0) == 0) {
    r.ask = true;
    error.remove_prefix(4);
  } else {
    return std::nullopt;
  }
  const auto space = error.find(' ');
  if (space == std::string_view::npos || space == 0) return std::nullopt;
  const std::string slot(error.substr(0, space));
  if (slot.find_first_not_of("0123456789") != std::string::npos || slot.size() > 5) return std::nullopt;
  r.slot = std::stoi(slot);
  if (r.slot >= kClusterSlots) return std::nullopt;
  try {
    r.node = ParseNode(std::string(error.substr(space + 1)), "redirect");
  } catch (const InputError&) {
    return std::nullopt;
  }
  return r;
}

}  // namespace strata
