// strata-source-sim: init | advance | serve. See source_sim.h.
#include <CLI/CLI.hpp>
#include <chrono>
#include <iostream>
#include <thread>

#include "common/time_util.h"
#include "services/source_sim/source_sim.h"

int main(int argc, char** argv) {
  CLI::App app{"strata-source-sim — simulated source systems for demos and tests"};
  app.require_subcommand(1);
  strata::source_sim::SimOptions opt;
  std::string dsn = std::getenv("STRATA_SOURCE_DSN") ? std::getenv("STRATA_SOURCE_DSN") : "";
  app.add_option("--seed", opt.seed, "random seed");
  app.add_option("--dsn", dsn, "source PostgreSQL DSN (env STRATA_SOURCE_DSN)");

  std::string start = "2024-01-01", through, listen = "127.0.0.1:8089";
  auto* init = app.add_subcommand("init", "create the shop schema (drops an existing one)");
  init->add_option("--start", start, "first simulated day");
  int days_back = -1;
  init->add_option("--days-back", days_back, "first simulated day: this many days before today (UTC), instead of --start")
      ->check(CLI::NonNegativeNumber);
  bool if_empty = false;
  init->add_flag("--if-empty", if_empty, "keep an existing shop (and its history) instead of dropping it");
  auto* advance = app.add_subcommand("advance", "generate source activity day by day");
  advance->add_option("--through", through, "last day to generate (YYYY-MM-DD)")->required();
  advance->add_option("--orders-per-day", opt.orders_per_day, "orders per day (0: random 15..30)");
  advance->add_option("--items-per-order", opt.items_per_order, "lines per order (0: random 1..4)");
  auto* serve = app.add_subcommand("serve", "serve the HTTP JSON API and the HTML page");
  serve->add_option("--listen", listen, "host:port");
  serve->add_option("--malformed-every", opt.malformed_every, "corrupt every Nth business record (0: never)");
  serve->add_option("--states-table-id", opt.states_table_id, "id of the states <table>");
  if (const char* t = std::getenv("STRATA_REVIEWS_TOKEN")) opt.api_token = t;
  serve->add_option("--api-token", opt.api_token, "bearer token the reviews API requires (env STRATA_REVIEWS_TOKEN)");
  serve->add_option("--rate-limit", opt.rate_limit, "API requests per second before 429 (0: unlimited)");
  int advance_every = 0;
  serve->add_option("--advance-every", advance_every,
                    "every this many seconds, generate the shop's activity through yesterday (UTC): the source "
                    "follows the calendar (0: never)");
  CLI11_PARSE(app, argc, argv);
  try {
    if (*serve) {
      opt.dsn = dsn;
      if (advance_every > 0) {
        if (dsn.empty()) {
          std::cerr << "strata-source-sim: --advance-every needs --dsn or STRATA_SOURCE_DSN\n";
          return 2;
        }
        // The calendar's clock: each pass generates every day up to yesterday not generated yet.
        std::thread([dsn, opt, advance_every] {
          for (;;) {
            try {
              const std::string yesterday = strata::FormatDate((strata::NowUnixMs() / 86400000) - 1);
              if (const int n = strata::source_sim::Advance(dsn, yesterday, opt))
                std::cout << "advanced " << n << " day(s) through " << yesterday << std::endl;
            } catch (const std::exception& e) {
              std::cerr << "strata-source-sim: advance: " << e.what() << std::endl;
            }
            std::this_thread::sleep_for(std::chrono::seconds(advance_every));
          }
        }).detach();
      }
      return strata::source_sim::Serve(listen, opt);
    }
    if (dsn.empty()) {
      std::cerr << "strata-source-sim: --dsn or STRATA_SOURCE_DSN is required\n";
      return 2;
    }
    if (*init) {
      if (if_empty && strata::source_sim::ShopExists(dsn)) {
        std::cout << "shop exists: kept as it is (--if-empty)\n";
        return 0;
      }
      if (days_back >= 0) start = strata::FormatDate((strata::NowUnixMs() / 86400000) - days_back);
      strata::source_sim::InitShop(dsn, start, opt);
      std::cout << "shop initialised, simulation starts " << start << "\n";
      return 0;
    }
    const int days = strata::source_sim::Advance(dsn, through, opt);
    std::cout << "advanced " << days << " day(s) through " << through << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "strata-source-sim: " << e.what() << "\n";
    return 1;
  }
}
