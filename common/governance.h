// Warehouse governance shared by every service that creates schemas: the roles strata creates
// and what each may read. Running GovernanceDdl() after creating a schema grants it; it is
// idempotent and skips schemas that do not exist yet, so services may start in any order.
//   analyst    dwh, marts, serving, quality
//   scientist  the analyst's layers + staging
//   engineer   everything: raw, staging, dwh, marts, serving, quality, ops
// Roles are created WITH LOGIN and no password: operators set passwords (ALTER ROLE ...).
// Nobody but the loading user may write.
#pragma once
#include <string>

namespace strata {

std::string GovernanceDdl();

}  // namespace strata
