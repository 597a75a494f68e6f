#!/bin/sh
# Runs the load benchmark (see bench/README.md); arguments are passed on, e.g. --instances 2000.
set -eu
cd "$(dirname "$0")/.."
exec cargo bench --bench load -- "$@"
