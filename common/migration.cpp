#include "common/migration.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include "common/errors.h"

namespace strata {

std::vector<Migration> LoadMigrations(const std::string& dir) {
  namespace fs = std::filesystem;
  std::vector<Migration> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  static const std::regex kName("^([0-9]{1,6})_([a-z0-9_]+)\\.sql$");
  std::map<int, std::string> seen;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string file = entry.path().string();
    const std::string base = entry.path().filename().string();
    if (!entry.is_regular_file()) continue;
    std::smatch m;
    if (!std::regex_match(base, m, kName))
      throw InputError(file + ": a migration is named NNN_what.sql (NNN: its number, what: lower case, digits, _)");
    Migration mig;
    mig.file = file;
    mig.version = std::stoi(m[1].str());
    mig.name = m[2].str();
    if (auto [it, fresh] = seen.emplace(mig.version, file); !fresh)
      throw InputError(file + ": migration " + std::to_string(mig.version) + " is also " + it->second);
    std::ifstream in(file);
    std::stringstream ss;
    ss << in.rdbuf();
    mig.sql = ss.str();
    mig.checksum = Checksum(mig.sql);
    out.push_back(std::move(mig));
  }
  std::sort(out.begin(), out.end(), [](const Migration& a, const Migration& b) { return a.version < b.version; });
  return out;
}

}  // namespace strata
