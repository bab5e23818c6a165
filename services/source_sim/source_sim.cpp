#include "services/source_sim/source_sim.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <limits>
#include <memory>
#include <mutex>
#include <csignal>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>
#include <thread>

#include "common/errors.h"
#include "common/http_server.h"
#include "common/time_util.h"

namespace strata::source_sim {

namespace {

const char* kSchema = R"SQL(
DROP SCHEMA IF EXISTS shop CASCADE;
CREATE SCHEMA shop;
CREATE TABLE shop.sim_state (id int PRIMARY KEY DEFAULT 1, seed bigint NOT NULL, start_day date NOT NULL,
                             last_day date);
CREATE TABLE shop.customers (
  customer_id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL, address text NOT NULL,
  city text NOT NULL, state text NOT NULL, segment text NOT NULL,
  created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
CREATE TABLE shop.customer_history (customer_id bigint NOT NULL, changed_at timestamptz NOT NULL,
                                    change text NOT NULL);
CREATE TABLE shop.products (
  product_id bigint PRIMARY KEY, name text NOT NULL, category text NOT NULL, price numeric(10,2) NOT NULL,
  updated_at timestamptz NOT NULL);
CREATE TABLE shop.orders (
  order_id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES shop.customers,
  status text NOT NULL CHECK (status IN ('open', 'shipped', 'delivered', 'cancelled')),
  ordered_at timestamptz NOT NULL, updated_at timestamptz NOT NULL, note text);
CREATE TABLE shop.order_items (
  order_id bigint NOT NULL REFERENCES shop.orders, line_no int NOT NULL, product_id bigint NOT NULL,
  quantity int NOT NULL, unit_price numeric(10,2) NOT NULL, updated_at timestamptz NOT NULL,
  PRIMARY KEY (order_id, line_no));
CREATE TABLE shop.reviews (
  review_id bigint PRIMARY KEY, business_id text NOT NULL, stars int NOT NULL CHECK (stars BETWEEN 1 AND 5),
  title text NOT NULL, updated_at timestamptz NOT NULL);
CREATE INDEX ON shop.reviews (updated_at, review_id);
CREATE INDEX ON shop.customers (updated_at);
CREATE INDEX ON shop.products (updated_at);
CREATE INDEX ON shop.orders (updated_at);
CREATE INDEX ON shop.order_items (updated_at);
)SQL";

// One simulated day, all in SQL so a day of a million order lines takes seconds. setseed()
// makes random() deterministic for the session; every random pick is ordered by a key first.
// :day is the day's midnight (UTC), :first whether this is the simulation's first day.
const char* kDay = R"SQL(
WITH p AS (SELECT count(*) n FROM shop.products)
INSERT INTO shop.products
SELECT g, 'Product ' || g, (ARRAY['books','garden','kitchen','toys','sports','music'])[1 + (g % 6)],
       round((5 + random() * 195)::numeric, 2), :day + interval '1 minute'
FROM p, generate_series(1, 20) g WHERE p.n = 0;

WITH m AS (SELECT coalesce(max(customer_id), 0) AS m FROM shop.customers),
new AS (SELECT m.m + g AS id, :day + (random() * interval '6 hours') AS ts
        FROM m, generate_series(1, CASE WHEN :first THEN 40 ELSE 3 + floor(random() * 4)::int END) g)
INSERT INTO shop.customers
SELECT id, 'Customer ' || id, 'customer' || id || '@example.com',
       (100 + floor(random() * 9800))::int || ' ' ||
         (ARRAY['Oak','Maple','Pine','Cedar','Elm','Main','High','Park'])[1 + floor(random() * 8)::int] || ' St',
       (ARRAY['Springfield','Riverton','Fairview','Franklin','Greenville','Bristol'])[1 + floor(random() * 6)::int],
       (ARRAY['CA','TX','NY','FL','WA','IL','OH','GA'])[1 + floor(random() * 8)::int],
       (ARRAY['consumer','corporate','small_business'])[1 + floor(random() * 3)::int], ts, ts
FROM new;

WITH pick AS (
  SELECT customer_id, r FROM (SELECT customer_id, random() AS r FROM shop.customers
                              WHERE created_at < :day ORDER BY customer_id) x
  ORDER BY r LIMIT 2 + floor(random() * 3)::int),
chg AS (
  SELECT customer_id, :day + interval '6 hours' + random() * interval '5 hours' AS ts,
         random() < 0.5 AS moves,
         (100 + floor(random() * 9800))::int || ' ' ||
           (ARRAY['Birch','Willow','Lake','Hill','River','Sunset'])[1 + floor(random() * 6)::int] || ' Ave' AS addr,
         (ARRAY['consumer','corporate','small_business'])[1 + floor(random() * 3)::int] AS seg
  FROM pick ORDER BY customer_id),
upd AS (
  UPDATE shop.customers c
  SET address = CASE WHEN chg.moves THEN chg.addr ELSE c.address END,
      segment = CASE WHEN chg.moves THEN c.segment ELSE chg.seg END,
      updated_at = chg.ts
  FROM chg WHERE c.customer_id = chg.customer_id
  RETURNING c.customer_id, chg.ts, CASE WHEN chg.moves THEN 'address' ELSE 'segment' END AS change)
INSERT INTO shop.customer_history SELECT customer_id, ts, change FROM upd;

INSERT INTO shop.customer_history
SELECT customer_id, created_at, 'created' FROM shop.customers
WHERE created_at >= :day AND created_at < :day + interval '1 day';

WITH pick AS (
  SELECT product_id FROM (SELECT product_id, random() AS r FROM shop.products
                          WHERE updated_at < :day ORDER BY product_id) x
  ORDER BY r LIMIT 1 + floor(random() * 3)::int)
UPDATE shop.products p SET price = round(p.price * (0.9 + random() * 0.2)::numeric, 2),
       updated_at = :day + random() * interval '6 hours'
FROM pick WHERE p.product_id = pick.product_id;

WITH trans AS (
  SELECT order_id, status, random() AS r, :day + interval '6 hours' + random() * interval '5 hours' AS ts
  FROM shop.orders WHERE ordered_at < :day AND status IN ('open', 'shipped') ORDER BY order_id)
UPDATE shop.orders o
SET status = CASE WHEN t.status = 'open' AND t.r < 0.1 THEN 'cancelled'
                  WHEN t.status = 'open' AND t.r < 0.6 THEN 'shipped'
                  ELSE 'delivered' END,
    updated_at = t.ts
FROM trans t
WHERE o.order_id = t.order_id AND (t.status = 'open' AND t.r < 0.6 OR t.status = 'shipped' AND t.r < 0.6);

WITH m AS (SELECT coalesce(max(order_id), 0) AS m FROM shop.orders),
c AS (SELECT max(customer_id) AS n FROM shop.customers),
new AS (SELECT m.m + g AS id, 1 + floor(random() * c.n)::bigint AS cust,
               :day + interval '12 hours' + random() * interval '11 hours 59 minutes' AS ts
        FROM m, c, generate_series(1, CASE WHEN :orders > 0 THEN :orders ELSE 15 + floor(random() * 16)::int END) g)
INSERT INTO shop.orders SELECT id, cust, 'open', ts, ts, NULL FROM new ORDER BY id;

WITH m AS (SELECT coalesce(max(review_id), 0) AS m FROM shop.reviews)
INSERT INTO shop.reviews
SELECT m.m + g, 'b' || lpad((1 + floor(random() * 35))::int::text, 4, '0'), 1 + floor(random() * 5)::int,
       (ARRAY['great','fine','so-so','awful','lovely','slow','friendly'])[1 + floor(random() * 7)::int] || ' visit',
       date_trunc('second', :day + random() * interval '23 hours')
FROM m, generate_series(1, 20 + floor(random() * 10)::int) g;

WITH pick AS (
  SELECT review_id FROM (SELECT review_id, random() AS r FROM shop.reviews WHERE updated_at < :day ORDER BY review_id) x
  ORDER BY r LIMIT 3)
UPDATE shop.reviews r SET stars = 1 + (r.stars % 5), updated_at = date_trunc('second', :day + random() * interval '23 hours')
FROM pick WHERE r.review_id = pick.review_id;

-- On the fourth simulated day the last product is discontinued: deleted from the catalogue
-- (no order line names it from then on).
DELETE FROM shop.products
WHERE product_id = 20 AND (:day AT TIME ZONE 'UTC')::date = (SELECT start_day + 3 FROM shop.sim_state);

WITH np AS (SELECT count(*) AS n FROM shop.products),
lines AS (
  SELECT o.order_id, l AS line_no, 1 + floor(random() * np.n)::bigint AS product_id,
         1 + floor(random() * 5)::int AS quantity, o.ordered_at
  FROM (SELECT order_id, ordered_at,
               CASE WHEN :items > 0 THEN :items ELSE 1 + floor(random() * 4)::int END AS k
        FROM shop.orders WHERE ordered_at >= :day ORDER BY order_id) o
  CROSS JOIN np
  CROSS JOIN LATERAL generate_series(1, o.k) l)
INSERT INTO shop.order_items
SELECT l.order_id, l.line_no, l.product_id, l.quantity, p.price, l.ordered_at
FROM lines l JOIN shop.products p USING (product_id);
)SQL";

std::string Replace(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
  return s;
}

uint64_t Mix(uint64_t x) {  // splitmix64: a well-spread hash for seeds
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

const char* kStates[][2] = {
    {"Alabama", "AL"}, {"Alaska", "AK"}, {"Arizona", "AZ"}, {"Arkansas", "AR"}, {"California", "CA"},
    {"Colorado", "CO"}, {"Connecticut", "CT"}, {"Delaware", "DE"}, {"District of Columbia", "DC"},
    {"Florida", "FL"}, {"Georgia", "GA"}, {"Hawaii", "HI"}, {"Idaho", "ID"}, {"Illinois", "IL"},
    {"Indiana", "IN"}, {"Iowa", "IA"}, {"Kansas", "KS"}, {"Kentucky", "KY"}, {"Louisiana", "LA"},
    {"Maine", "ME"}, {"Maryland", "MD"}, {"Massachusetts", "MA"}, {"Michigan", "MI"}, {"Minnesota", "MN"},
    {"Mississippi", "MS"}, {"Missouri", "MO"}, {"Montana", "MT"}, {"Nebraska", "NE"}, {"Nevada", "NV"},
    {"New Hampshire", "NH"}, {"New Jersey", "NJ"}, {"New Mexico", "NM"}, {"New York", "NY"},
    {"North Carolina", "NC"}, {"North Dakota", "ND"}, {"Ohio", "OH"}, {"Oklahoma", "OK"}, {"Oregon", "OR"},
    {"Pennsylvania", "PA"}, {"Rhode Island", "RI"}, {"South Carolina", "SC"}, {"South Dakota", "SD"},
    {"Tennessee", "TN"}, {"Texas", "TX"}, {"Utah", "UT"}, {"Vermont", "VT"}, {"Virginia", "VA"},
    {"Washington", "WA"}, {"West Virginia", "WV"}, {"Wisconsin", "WI"}, {"Wyoming", "WY"}};

constexpr int kBusinesses = 35;
constexpr int kPageSize = 10;

}  // namespace

bool ShopExists(const std::string& dsn) {
  pqxx::connection c(dsn);
  pqxx::read_transaction tx(c);
  return tx.exec("SELECT to_regclass('shop.sim_state') IS NOT NULL")[0][0].as<bool>();
}

void InitShop(const std::string& dsn, const std::string& start, const SimOptions& opt) {
  ParseDate(start, "--start");
  pqxx::connection c(dsn);
  pqxx::work tx(c);
  tx.exec(kSchema);
  tx.exec_params("INSERT INTO shop.sim_state (seed, start_day) VALUES ($1, $2)", opt.seed, start);
  tx.commit();
}

int Advance(const std::string& dsn, const std::string& through, const SimOptions& opt) {
  ParseDate(through, "--through");
  pqxx::connection c(dsn);
  int days = 0;
  for (;;) {
    pqxx::work tx(c);
    tx.exec("SET LOCAL TIME ZONE 'UTC'");
    const auto st = tx.exec("SELECT seed, start_day::text, coalesce(last_day::text, '') FROM shop.sim_state FOR UPDATE");
    if (st.empty()) throw InputError("shop.sim_state is empty: run 'strata-source-sim init' first");
    const long long seed = st[0][0].as<long long>();
    const std::string start = st[0][1].c_str();
    const std::string last = st[0][2].c_str();
    const std::string day = last.empty() ? start : AddDays(last, 1);
    if (day > through) break;
    const double fraction =
        static_cast<double>(Mix(static_cast<uint64_t>(seed) ^ Mix(static_cast<uint64_t>(ParseDate(day))))) /
            18446744073709551616.0 * 2.0 - 1.0;
    tx.exec("SELECT setseed(" + std::to_string(fraction) + ")");
    std::string sql = Replace(kDay, ":day", "'" + day + "'::timestamptz");
    sql = Replace(sql, ":first", last.empty() ? "true" : "false");
    sql = Replace(sql, ":orders", std::to_string(opt.orders_per_day));
    sql = Replace(sql, ":items", std::to_string(opt.items_per_order));
    tx.exec(sql);
    tx.exec_params("UPDATE shop.sim_state SET last_day = $1", day);
    tx.commit();
    ++days;
  }
  return days;
}

std::string BusinessesPage(const std::string& date, int page, const SimOptions& opt, int* status) {
  if (!IsValidDate(date) || page < 1) {
    *status = 400;
    return R"({"error":"date (YYYY-MM-DD) and page (>= 1) are required"})";
  }
  const int64_t day = ParseDate(date);
  const int total_pages = (kBusinesses + kPageSize - 1) / kPageSize;
  nlohmann::json records = nlohmann::json::array();
  static const char* kCategories[] = {"coffee", "bakery", "books", "bikes", "pizza", "tacos", "florist"};
  for (int i = (page - 1) * kPageSize; i < std::min(kBusinesses, page * kPageSize); ++i) {
    const uint64_t h = Mix(static_cast<uint64_t>(opt.seed) * 1000003ULL + static_cast<uint64_t>(i));
    const uint64_t hd = Mix(h ^ static_cast<uint64_t>(day));
    char id[16];
    std::snprintf(id, sizeof id, "b%04d", i + 1);
    const int base_reviews = static_cast<int>(h % 400);
    const int growth = static_cast<int>((day - 19000) * static_cast<int64_t>(1 + h % 5) + static_cast<int64_t>(hd % 3));
    nlohmann::json rec = {
        {"id", id},
        {"name", std::string(kCategories[h % 7]) + " place " + std::to_string(i + 1)},
        {"category", kCategories[h % 7]},
        {"price_level", static_cast<int>(1 + (h >> 8) % 4)},
        {"rating", static_cast<double>(30 + (hd % 21)) / 10.0},
        {"review_count", std::max(0, base_reviews + growth)},
        {"state", kStates[(h >> 16) % 51][1]}};
    if (opt.malformed_every > 0 && (i + 1) % opt.malformed_every == 0) {
      switch (((i + 1) / opt.malformed_every) % 3) {
        case 1: rec["rating"] = "n/a"; break;                          // wrong type
        case 2: rec.erase("id"); break;                                // missing key
        default: records.push_back(rec.dump().substr(0, 25)); continue;  // broken JSON
      }
    }
    records.push_back(rec);
  }
  *status = 200;
  return nlohmann::json{{"date", date}, {"page", page}, {"total_pages", total_pages}, {"total", kBusinesses},
                        {"businesses", records}}
      .dump();
}

std::string StatesHtml(const SimOptions& opt) {
  std::string html =
      "<!DOCTYPE html>\n<html><head><title>US states</title></head><body>\n"
      "<h1>States &amp; territories</h1>\n"
      "<table id=\"regions\"><tr><th>Region</th></tr><tr><td>West</td></tr></table>\n"
      "<table id=\"" + opt.states_table_id + "\" class=\"wikitable\">\n"
      "<thead><tr><th>Name</th><th>Abbreviation</th></tr></thead>\n<tbody>\n";
  for (const auto& s : kStates)
    html += "<tr><td>" + std::string(s[0]) + "&nbsp;</td><td>\n  " + s[1] + " </td></tr>\n";
  return html + "</tbody></table>\n</body></html>\n";
}

std::string CensusJson(const SimOptions& opt) {
  nlohmann::json out = nlohmann::json::array();
  out.push_back({"NAME", "POP", "state"});
  int fips = 1;
  for (const auto& st : kStates) {
    const uint64_t h = Mix(static_cast<uint64_t>(opt.seed) ^ std::hash<std::string>{}(st[0]));
    char code[8];
    std::snprintf(code, sizeof code, "%02d", fips++);
    out.push_back({st[0], std::to_string(500000 + h % 39000000), code});
  }
  return out.dump();
}

namespace {

// Faults and limits switched at run time through POST /control.
struct Faults {
  std::atomic<int> malformed_every{0};
  std::atomic<int> fail_next{0};      // 500
  std::atomic<int> throttle_next{0};  // 429 + Retry-After: 1
  std::atomic<int> truncate_next{0};  // body cut in half
  std::atomic<int> slow_next{0};      // sleep slow_ms first
  std::atomic<int> slow_ms{2000};
  std::atomic<int> repeat_page{0};    // the next page > 1 of /businesses serves the previous page
  std::atomic<int> shift_rows{0};     // the next /reviews/by-offset page moves its first row to the end
  std::atomic<int> rate_limit{0};     // requests/s for the API endpoints; 0: unlimited
  std::atomic<int> extra_field{0};    // reviews carry a new field "language"
  std::atomic<long long> requests{0};
  std::mutex mu;
  std::chrono::steady_clock::time_point window_start = std::chrono::steady_clock::now();
  int window_count = 0;

  static bool Take(std::atomic<int>& n) {
    int v = n.load();
    while (v > 0)
      if (n.compare_exchange_weak(v, v - 1)) return true;
    return false;
  }
  // Applies auth, rate limit and injected faults; true when the request was answered here.
  bool Intercept(const httplib::Request& req, httplib::Response& res, const std::string& token) {
    ++requests;
    if (!token.empty() && req.get_header_value("Authorization") != "Bearer " + token) {
      res.status = 401;
      res.set_content(R"({"error":"missing or wrong bearer token"})", "application/json");
      return true;
    }
    if (const int limit = rate_limit.load(); limit > 0) {
      std::lock_guard<std::mutex> lock(mu);
      const auto now = std::chrono::steady_clock::now();
      if (now - window_start >= std::chrono::seconds(1)) {
        window_start = now;
        window_count = 0;
      }
      if (++window_count > limit) {
        res.status = 429;
        res.set_header("Retry-After", "1");
        res.set_content(R"({"error":"rate limited"})", "application/json");
        return true;
      }
    }
    if (Take(throttle_next)) {
      res.status = 429;
      res.set_header("Retry-After", "1");
      res.set_content(R"({"error":"slow down"})", "application/json");
      return true;
    }
    if (Take(fail_next)) {
      res.status = 500;
      res.set_content(R"({"error":"injected failure"})", "application/json");
      return true;
    }
    if (Take(slow_next)) std::this_thread::sleep_for(std::chrono::milliseconds(slow_ms.load()));
    return false;
  }
  void Finish(httplib::Response& res, std::string body) {
    if (Take(truncate_next)) body = body.substr(0, body.size() / 2);
    res.set_content(body, "application/json");
  }
};

pqxx::connection& SourceConn(const std::string& dsn) {
  thread_local std::unique_ptr<pqxx::connection> conn;
  if (!conn || !conn->is_open()) conn = std::make_unique<pqxx::connection>(dsn);
  return *conn;
}

const char* kReviewCols =
    "review_id, business_id, stars, title, to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
    "(extract(epoch FROM updated_at) * 1000000)::bigint";

nlohmann::json ReviewJson(const pqxx::row& r, bool extra) {
  nlohmann::json j = {{"review_id", r[0].as<long long>()}, {"business_id", r[1].c_str()},
                      {"stars", r[2].as<int>()}, {"title", r[3].c_str()}, {"updated_at", r[4].c_str()}};
  if (extra) j["language"] = "en";
  return j;
}

}  // namespace

int Serve(const std::string& listen, const SimOptions& opt) {
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  // Faults can be switched at run time (POST /control?fail_next=2&...) so one simulator serves
  // both clean and faulty requests to a running stack.
  Faults faults;
  faults.malformed_every = opt.malformed_every;
  faults.rate_limit = opt.rate_limit;
  const std::string token = opt.api_token;
  const std::string dsn = opt.dsn;
  HttpListener http;
  httplib::Server& server = http.server();
  server.Post("/control", [&faults](const httplib::Request& req, httplib::Response& res) {
    std::pair<const char*, std::atomic<int>*> knobs[] = {
        {"malformed_every", &faults.malformed_every}, {"fail_next", &faults.fail_next},
        {"throttle_next", &faults.throttle_next},     {"truncate_next", &faults.truncate_next},
        {"slow_next", &faults.slow_next},             {"slow_ms", &faults.slow_ms},
        {"repeat_page", &faults.repeat_page},         {"shift_rows", &faults.shift_rows},
        {"rate_limit", &faults.rate_limit},           {"extra_field", &faults.extra_field}};
    std::string out;
    for (auto& [name, knob] : knobs) {
      if (req.has_param(name)) {
        try {
          *knob = std::stoi(req.get_param_value(name));
        } catch (const std::exception&) {
          res.status = 400;
          res.set_content(std::string(name) + ": expected an integer\n", "text/plain");
          return;
        }
      }
      out += std::string(name) + "=" + std::to_string(knob->load()) + "\n";
    }
    res.set_content(out + "requests=" + std::to_string(faults.requests.load()) + "\n", "text/plain");
  });
  server.Get("/health", [](const httplib::Request&, httplib::Response& res) { res.set_content("ok\n", "text/plain"); });
  std::atomic<int> last_business_page{0};
  server.Get("/businesses", [&](const httplib::Request& req, httplib::Response& res) {
    if (faults.Intercept(req, res, "")) return;
    SimOptions now = opt;
    now.malformed_every = faults.malformed_every;
    int status = 200;
    int page = 1;
    try {
      page = req.has_param("page") ? std::stoi(req.get_param_value("page")) : 1;
    } catch (const std::exception&) {
      page = 0;
    }
    // A page served twice in place of the next one, as flaky paginated APIs do.
    if (page > 1 && Faults::Take(faults.repeat_page)) page = page - 1;
    last_business_page = page;
    std::string body = BusinessesPage(req.get_param_value("date"), page, now, &status);
    res.status = status;
    faults.Finish(res, std::move(body));
  });
  server.Get("/states.html", [&opt](const httplib::Request&, httplib::Response& res) {
    res.set_content(StatesHtml(opt), "text/html; charset=utf-8");
  });
  server.Get("/census", [&](const httplib::Request& req, httplib::Response& res) {
    if (faults.Intercept(req, res, "")) return;
    if (req.get_param_value("get") != "NAME,POP" || req.get_param_value("for") != "state:*") {
      res.status = 400;
      res.set_content(R"({"error":"supported: get=NAME,POP&for=state:*"})", "application/json");
      return;
    }
    faults.Finish(res, CensusJson(opt));
  });
  // The reviews API, over shop.reviews, in three pagination styles. Every style orders by
  // (updated_at, review_id) and filters by ?updated_since=.
  auto reviews = [&](const std::string& style) {
    return [&, style](const httplib::Request& req, httplib::Response& res) {
      if (faults.Intercept(req, res, token)) return;
      if (dsn.empty()) {
        res.status = 503;
        res.set_content(R"({"error":"the simulator was started without a source DSN"})", "application/json");
        return;
      }
      try {
        const int limit = std::clamp(req.has_param("limit") ? std::stoi(req.get_param_value("limit")) : 50, 1, 1000);
        const std::string since = req.has_param("updated_since") ? req.get_param_value("updated_since") : "-infinity";
        pqxx::connection& c = SourceConn(dsn);
        pqxx::work tx(c);
        const bool extra = faults.extra_field > 0;
        nlohmann::json out = nlohmann::json::object();
        nlohmann::json recs = nlohmann::json::array();
        if (style == "cursor") {
          long long after_us = std::numeric_limits<long long>::min(), after_id = 0;
          if (req.has_param("cursor")) {
            const std::string cur = req.get_param_value("cursor");
            const size_t colon = cur.find(':');
            if (colon == std::string::npos) throw std::invalid_argument("cursor");
            after_us = std::stoll(cur.substr(0, colon));
            after_id = std::stoll(cur.substr(colon + 1));
          }
          const auto r = tx.exec_params(
              std::string("SELECT ") + kReviewCols +
                  " FROM shop.reviews WHERE updated_at >= $1::timestamptz AND ((extract(epoch FROM updated_at) * 1000000)::bigint, "
                  "review_id) > ($2, $3) ORDER BY updated_at, review_id LIMIT $4",
              since, after_us, after_id, limit + 1);
          for (int i = 0; i < std::min<int>(limit, static_cast<int>(r.size())); ++i) recs.push_back(ReviewJson(r[i], extra));
          out["next_cursor"] = nullptr;
          if (static_cast<int>(r.size()) > limit)
            out["next_cursor"] = std::string(r[limit - 1][5].c_str()) + ":" + r[limit - 1][0].c_str();
        } else {
          long long offset = 0;
          if (style == "offset") offset = req.has_param("offset") ? std::stoll(req.get_param_value("offset")) : 0;
          else offset = (req.has_param("page") ? std::stoll(req.get_param_value("page")) - 1 : 0) * limit;
          if (offset < 0) throw std::invalid_argument("offset");
          const auto r = tx.exec_params(std::string("SELECT ") + kReviewCols +
                                            " FROM shop.reviews WHERE updated_at >= $1::timestamptz "
                                            "ORDER BY updated_at, review_id LIMIT $2 OFFSET $3",
                                        since, limit, offset);
          const long long total =
              tx.exec_params1("SELECT count(*) FROM shop.reviews WHERE updated_at >= $1::timestamptz", since)[0].as<long long>();
          for (const auto& row : r) recs.push_back(ReviewJson(row, extra));
          if (style == "offset") {
            out["total"] = total;
            if (!r.empty() && Faults::Take(faults.shift_rows)) {
              // A concurrent edit: the page's first row moves to the end of the listing.
              tx.exec_params("UPDATE shop.reviews SET updated_at = (SELECT max(updated_at) FROM shop.reviews) + "
                             "interval '1 second' WHERE review_id = $1",
                             r[0][0].as<long long>());
            }
          } else if (offset + limit < total) {
            std::string next = "/reviews/by-page?page=" + std::to_string(offset / limit + 2) + "&limit=" + std::to_string(limit);
            if (req.has_param("updated_since")) next += "&updated_since=" + httplib::detail::encode_query_param(since);
            res.set_header("Link", "<" + next + ">; rel=\"next\"");
          }
        }
        tx.commit();
        out["reviews"] = recs;
        faults.Finish(res, out.dump());
      } catch (const pqxx::data_exception& e) {
        res.status = 400;
        res.set_content(nlohmann::json{{"error", e.what()}}.dump(), "application/json");
      } catch (const std::invalid_argument&) {
        res.status = 400;
        res.set_content(R"({"error":"bad limit, offset, page or cursor"})", "application/json");
      } catch (const std::exception& e) {
        res.status = 500;
        res.set_content(nlohmann::json{{"error", e.what()}}.dump(), "application/json");
      }
    };
  };
  server.Get("/reviews", reviews("cursor"));
  server.Get("/reviews/by-offset", reviews("offset"));
  server.Get("/reviews/by-page", reviews("link"));
  http.Start(listen, "--listen");
  int sig = 0;
  sigwait(&sigs, &sig);
  http.Stop();
  return 0;
}

}  // namespace strata::source_sim
