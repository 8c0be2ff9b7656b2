#!/usr/bin/env bash
# Install posttrain into .venv from scratch: torch's CPU build first, then the package and test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
# System packages, installed when we can (root on Debian/Ubuntu): bubblewrap is the code sandbox's
# isolation layer; chromium runs the labelling page's browser tests (tests/collect/test_browser.py)
missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[dev,distributed]"  # distributed: Ray, for tests/distributed
echo "posttrain installed in .venv"
