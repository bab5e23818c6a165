#!/usr/bin/env bash
# with_stack_env.sh STACK_DIR CMD...: runs CMD with the test stack's addresses in the environment.
set -euo pipefail
dir=$1; shift
# shellcheck disable=SC1091
. "$dir/env"
exec "$@"
