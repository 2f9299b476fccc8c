#!/usr/bin/env bash
# Prints the path of the pinned helm, building it from the Go module proxy the first time (go install; no
# download site). The binary is kept per machine (~/.cache/enlace/helm-<version>, beside Go's own caches) and
# linked into the checkout's .cache/, so reruns and fresh clones (CI) find it at once; only a new machine builds
# it (measured: ~9 CPU-minutes, 28 min on a busy 2-core machine). tests/deploy/test_k8s.py and
# deploy/prerequisites.sh (test) call it.
#   deploy/k8s/helm.sh            # prints the path; building logs go to stderr
set -euo pipefail

version=v4.3.2
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
link="$repo/.cache/helm-$version/helm"
machine="${XDG_CACHE_HOME:-$HOME/.cache}/enlace/helm-$version"

if [ ! -x "$machine/helm" ]; then
  if ! command -v go >/dev/null 2>&1; then
    echo "helm.sh: Go is needed to build helm $version (go install helm.sh/helm/v4/cmd/helm@$version);" \
      "install Go 1.26 or newer" >&2
    exit 1
  fi
  mkdir -p "$machine"
  # One build at a time: a second caller waits for the first one's binary.
  exec 9>"$machine.lock"
  flock 9
  if [ ! -x "$machine/helm" ]; then
    echo "helm.sh: building helm $version from the Go module proxy (once per machine: minutes)" >&2
    start=$SECONDS
    GOBIN="$machine" GOFLAGS=-buildvcs=false go install "helm.sh/helm/v4/cmd/helm@$version" >&2
    echo "helm.sh: built helm $version in $((SECONDS - start)) s" >&2
  fi
fi
if [ ! -x "$link" ]; then
  mkdir -p "$(dirname "$link")"
  ln -sfn "$machine/helm" "$link"
fi
echo "$link"
