#!/usr/bin/env bash
# Local development stack without Docker: an S3 server (rclone, from the dev extra) on 127.0.0.1, a Ray head, the API.
# Usage: infra/dev-stack.sh [DATA_DIR]   then: export the printed variables and use facegrid --address http://127.0.0.1:8265
set -euo pipefail
data=${1:-${TMPDIR:-/tmp}/facegrid-dev}
mkdir -p "$data/s3/facegrid"
key=facegrid-dev secret=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
rclone serve s3 "$data/s3" --addr 127.0.0.1:9000 --auth-key "$key,$secret" --vfs-cache-mode off &
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
ray start --head --node-ip-address 127.0.0.1 --dashboard-host 127.0.0.1 --num-cpus 2
cat <<VARS
export FACEGRID_STORE=s3://facegrid FACEGRID_S3_ENDPOINT=127.0.0.1:9000
export FACEGRID_S3_ACCESS_KEY=$key FACEGRID_S3_SECRET_KEY=$secret
VARS
