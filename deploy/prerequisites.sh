#!/usr/bin/env bash
# Checks the system tools `make test` (and `make up`) need, and installs the missing ones from Debian's
# packages when it can (root with apt-get); otherwise it names each missing tool and its package, and fails.
#   prerequisites.sh test | up
# `up` needs Java, Maven, openssl and Python 3.11; `test` also needs kcat (the non-Python Kafka client of the
# conformance test), Node.js (the integrators' example receiver), PostgreSQL's server binaries (the suite starts
# its own throwaway cluster) and Go (helm, built from the Go module proxy for the Helm chart's tests).
set -euo pipefail

mode="${1:-test}"
declare -A package_of=(
  [java]=openjdk-17-jre-headless [mvn]=maven [kcat]=kcat [node]=nodejs [initdb]=postgresql [openssl]=openssl
)
wanted=(java mvn openssl)  # openssl: the cluster's certificates (make up CLUSTER=3, tests/cluster)
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
# tests/deploy/test_k8s.py renders the Helm chart with helm built once per machine from the Go module proxy (Go 1.26
# is on this kind of machine; Debian's Go is too old). On a new machine that takes minutes, so the build starts
# here in the background and runs beside the suite; the chart's tests run last and wait for it (helm.sh's lock).
if [ "$mode" = test ]; then
  if command -v go >/dev/null 2>&1; then
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    mkdir -p "$here/../.cache"
    setsid nohup "$here/k8s/helm.sh" >"$here/../.cache/helm-build.log" 2>&1 </dev/null &
  else
    echo "prerequisites: Go is missing: tests/deploy/test_k8s.py will fail (it builds helm with go install)" >&2
  fi
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
