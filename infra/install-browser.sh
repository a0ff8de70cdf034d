#!/usr/bin/env bash
# The console's browser tests drive Debian's Chromium through its chromedriver: install both when missing
# (as root, or through sudo). Without them those tests skip and say why.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install-browser: no apt-get here; install chromium and chromedriver yourself" >&2
    exit 0
fi
run() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
export DEBIAN_FRONTEND=noninteractive
run apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
    || { run apt-get update -q >/dev/null 2>&1 && run apt-get install -y -q chromium chromium-driver >/dev/null; } \
    || echo "install-browser: could not install chromium and chromium-driver; the console's browser tests will skip" >&2
