#!/bin/sh
# Lets the compose deployment's streaming replica (profile `scale`, postgres-replica) take a base
# backup and stream from this server, as the strata role with its password. Runs once, when the
# data volume is initialised.
set -e
echo "host replication strata all scram-sha-256" >>"$PGDATA/pg_hba.conf"
