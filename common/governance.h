// Warehouse governance shared by every service that creates schemas: the roles strata creates
// and what each may read. Running GovernanceDdl() after creating a schema grants it; it is
// idempotent and skips schemas that do not exist yet, so services may start in any order.
//   analyst    dwh, marts, serving, quality
//   scientist  the analyst's layers + staging
//   engineer   everything: raw, staging, dwh, marts, serving, quality, ops
// Roles are created WITH LOGIN; a role's password is set from the configuration when one is given
// (role_passwords: STRATA_ANALYST_PASSWORD, STRATA_SCIENTIST_PASSWORD, STRATA_ENGINEER_PASSWORD),
// so a dashboard logging in as `analyst` works as deployed; otherwise it has none and operators
// set it (ALTER ROLE ...). Nobody but the loading user may write.
#pragma once
#include <map>
#include <string>

namespace strata {

std::string GovernanceDdl();
// ALTER ROLE ... PASSWORD for each of `passwords` (role -> password) naming a role strata
// creates (others are ignored); empty when there is none.
std::string RolePasswordsSql(const std::map<std::string, std::string>& passwords);

}  // namespace strata
