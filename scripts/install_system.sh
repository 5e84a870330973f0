#!/usr/bin/env bash
# Installs the system packages Tollway needs (Debian): Redis, Prometheus (and promtool), and a compiler for
# llama-cpp-python.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need+=(redis-server)
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v cmake >/dev/null 2>&1 || need+=(cmake)
# The console's browser tests drive Debian's Chromium through Playwright; npm fetches the chart library.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v g++ >/dev/null 2>&1 || need+=(g++)
python3.11 -c 'import venv, ensurepip' >/dev/null 2>&1 || python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing system packages: ${need[*]}"
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
# policy-rc.d keeps Debian from starting a system Redis on 6379 or a Prometheus on 9090: Tollway runs its own.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null && $sudo chmod +x /usr/sbin/policy-rc.d
  trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
fi
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
