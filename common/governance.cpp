#include "common/governance.h"

#include "common/pg.h"

namespace strata {

std::string RolePasswordsSql(const std::map<std::string, std::string>& passwords) {
  std::string out;
  for (const auto& [role, password] : passwords)
    if ((role == "analyst" || role == "scientist" || role == "engineer") && !password.empty())
      out += "ALTER ROLE " + role + " PASSWORD " + QuoteLiteral(password) + ";\n";
  return out;
}

std::string GovernanceDdl() {
  return R"SQL(
DO $$
DECLARE
  grant_map CONSTANT text[][] := ARRAY[
    ['analyst', 'dwh'], ['analyst', 'marts'], ['analyst', 'serving'], ['analyst', 'quality'],
    ['scientist', 'staging'], ['scientist', 'dwh'], ['scientist', 'marts'], ['scientist', 'serving'],
    ['scientist', 'quality'],
    ['engineer', 'raw'], ['engineer', 'staging'], ['engineer', 'dwh'], ['engineer', 'marts'],
    ['engineer', 'serving'], ['engineer', 'quality'], ['engineer', 'ops']];
  g text[];
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['analyst', 'scientist', 'engineer'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('CREATE ROLE %I LOGIN', r);
    END IF;
  END LOOP;
  FOREACH g SLICE 1 IN ARRAY grant_map LOOP
    CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = g[2]);
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', g[2], g[1]);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', g[2], g[1]);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO %I', g[2], g[1]);
  END LOOP;
END $$;
)SQL";
}

}  // namespace strata
