// The simulated source systems of a small business, deterministic from a seed:
//  * an OLTP PostgreSQL schema `shop` (customers, products, orders, order_items) that advances
//    one day at a time: new customers and orders, address/segment changes, price changes and
//    order status transitions (open -> shipped -> delivered, open -> cancelled); every row
//    carries updated_at; shop.customer_history records each customer change for tests;
//  * an HTTP JSON API of local businesses, GET /businesses?date=&page= (paginated);
//  * an HTML page /states.html with a table of US states;
//  * a census-style endpoint /census?get=NAME,POP&for=state:* (array of arrays);
//  * a reviews API over shop.reviews (new and edited reviews every day), filtered by
//    ?updated_since= and paginated three ways: /reviews (cursor token), /reviews/by-offset
//    (offset/limit with a total) and /reviews/by-page (Link rel="next"), behind a bearer token.
// Fault injection (POST /control): malformed business records every Nth record (wrong type,
// missing key, broken JSON), 500s, 429 with Retry-After, slow responses, truncated JSON, a page
// served twice, rows shifting between pages, a new field, and a requests-per-second limit.
#pragma once
#include <string>

namespace strata::source_sim {

struct SimOptions {
  long long seed = 42;
  int orders_per_day = 0;     // 0: a small random number per day
  int items_per_order = 0;    // 0: 1..4 random
  int malformed_every = 0;    // 0: never
  std::string states_table_id = "states";
  std::string api_token;  // when set, /reviews* require "Authorization: Bearer <token>"
  int rate_limit = 0;     // API requests per second before 429 (0: unlimited)
  std::string dsn;        // the shop database, for /reviews*
};

// Creates (or recreates) schema shop; the simulation starts at `start` (nothing generated yet).
void InitShop(const std::string& dsn, const std::string& start, const SimOptions& opt);
// Whether the shop was initialised already (a deployment seeds it once, then keeps it).
bool ShopExists(const std::string& dsn);
// Generates every day after the last generated one through `through`; returns days generated.
int Advance(const std::string& dsn, const std::string& through, const SimOptions& opt);

// Pure, deterministic payloads of the HTTP sources.
std::string BusinessesPage(const std::string& date, int page, const SimOptions& opt, int* status);
std::string StatesHtml(const SimOptions& opt);
// Census-style array of arrays: [["NAME","POP","state"], ["Alabama","...","01"], ...].
std::string CensusJson(const SimOptions& opt);

// Serves the HTTP sources until SIGTERM/SIGINT.
int Serve(const std::string& listen, const SimOptions& opt);

}  // namespace strata::source_sim
