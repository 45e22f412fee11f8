#!/usr/bin/env bash
# Installs Debian's headless Chromium for the browser tests of the web page (tests/test_app_browser.py).
# Does nothing when it is already there; says so and carries on when it cannot be installed
# (not root, no apt): those tests then report that Chromium is missing.
set -u
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_chromium: chromium not found and apt-get unavailable as this user; browser tests are skipped (set ENTITWIST_REQUIRE_BROWSER=1 to require them)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1
apt-get install -y -qq chromium >/dev/null 2>&1 || echo "install_chromium: apt-get install chromium failed" >&2
exit 0
