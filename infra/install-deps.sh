#!/usr/bin/env bash
# Installs everything strata needs to build, test and run the demo on Debian 12.
# Idempotent: packages already present are skipped, so a warm machine pays ~1 s.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config ccache git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libpqxx-dev libpq-dev libhiredis-dev libcurl4-openssl-dev prometheus-cpp-dev
  libyaml-cpp-dev libgumbo-dev libcli11-dev libspdlog-dev libfmt-dev libzstd-dev thrift-compiler libthrift-dev libboost-dev libsnappy-dev libpugixml-dev
  nlohmann-json3-dev libcpp-httplib-dev libssl-dev zlib1g-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  postgresql-15 postgresql-client-15 redis-server redis-tools
  prometheus docker-compose chromium python3-grpcio python3-protobuf python3-psycopg2 python3-redis python3-botocore curl
)

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# What the tests take from npm, pinned by package-lock.json: independent Parquet readers
# (hyparquet, DuckDB) and an S3-compatible server (s3rver).
npm_deps() {
  if ! command -v npm >/dev/null; then
    ${SUDO:-} apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  local d
  for d in parquet s3 openapi; do
    # Installed again whenever the lock file changed since the last install.
    if ! cmp -s "$ROOT/tests/$d/package-lock.json" "$ROOT/tests/$d/node_modules/.strata-installed-lock"; then
      (cd "$ROOT/tests/$d" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
      cp "$ROOT/tests/$d/package-lock.json" "$ROOT/tests/$d/node_modules/.strata-installed-lock"
      echo "install-deps: npm packages for tests/$d installed"
    fi
  done
}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  npm_deps
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian packages start system-wide daemons; strata runs its own private ones.
$SUDO systemctl disable --now redis-server prometheus postgresql >/dev/null 2>&1 || true
npm_deps
echo "install-deps: done"
