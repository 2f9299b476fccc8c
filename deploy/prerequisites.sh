#!/usr/bin/env bash
# Checks the system tools `make test` (and `make up`) need, and installs the missing ones from Debian's
# packages when it can (root with apt-get); otherwise it names each missing tool and its package, and fails.
#   prerequisites.sh test | up
# `up` needs Java, Maven and Python 3.11; `test` also needs kcat (the non-Python Kafka client of the
# conformance test), Node.js (the integrators' example receiver) and PostgreSQL's server binaries (the
# tests/postgres lane starts its own throwaway cluster).
set -euo pipefail

mode="${1:-test}"
declare -A package_of=(
  [java]=openjdk-17-jre-headless [mvn]=maven [kcat]=kcat [node]=nodejs [initdb]=postgresql
)
wanted=(java mvn)
[ "$mode" = test ] && wanted+=(kcat node initdb)

present() {
  if [ "$1" = initdb ]; then ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; else command -v "$1" >/dev/null 2>&1; fi
}

missing=()
for tool in "${wanted[@]}"; do present "$tool" || missing+=("$tool"); done
if ! command -v python3.11 >/dev/null 2>&1 && ! python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "prerequisites: Python 3.11 is required (python3.11 or python3 at 3.11)" >&2
  exit 1
fi
# tests/deploy/test_k8s.py renders the Helm chart: helm is built once from the Go module proxy, here rather than
# inside a test (minutes on a new machine). Without Go that test fails and says why; the rest still runs.
if [ "$mode" = test ]; then
  "$(dirname "${BASH_SOURCE[0]}")/k8s/helm.sh" >/dev/null \
    || echo "prerequisites: no helm; tests/deploy/test_k8s.py will fail" >&2
fi
[ ${#missing[@]} -eq 0 ] && exit 0

packages=()
for tool in "${missing[@]}"; do packages+=("${package_of[$tool]}"); done
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "prerequisites: installing ${packages[*]} (for ${missing[*]})" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >&2
  for tool in "${missing[@]}"; do
    present "$tool" || { echo "prerequisites: $tool still missing after installing ${package_of[$tool]}" >&2; exit 1; }
  done
else
  echo "prerequisites: missing ${missing[*]}; install them with:" >&2
  echo "  sudo apt-get install ${packages[*]}" >&2
  exit 1
fi
