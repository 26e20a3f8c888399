#!/bin/sh
# Prestart step for every Tuneback process (API, serving replicas, scheduler):
# wait for the database (bounded: DB_WAIT_SECONDS, default 60), then apply the
# migrations. `tuneback db upgrade` takes a PostgreSQL advisory lock, so many
# processes or pods running this at once migrate one after another.
# With --model it also converts the base model once into TUNEBACK_DATA_DIR
# (serving replicas and the trainer need it; converting takes about 20 s).
set -eu

TUNEBACK="${TUNEBACK_BIN:-tuneback}"

"$TUNEBACK" db wait --timeout "${DB_WAIT_SECONDS:-60}"
"$TUNEBACK" db upgrade
if [ "${1:-}" = "--model" ]; then
    "$TUNEBACK" model prepare
fi
