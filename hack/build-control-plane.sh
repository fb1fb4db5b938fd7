#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kubectl, etcd and helm from their
# Go modules at the versions in hack/versions.env, into bin/.
#
# Binaries are cached per version under $AGENTRUN_CACHE (default ~/.cache/agentrun-operator),
# outside the work tree, so that a fresh clone on the same machine (CI) reuses them;
# bin/ only holds copies. A second run with the same pins builds nothing.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=hack/versions.env
source "$root/hack/versions.env"

cache="${AGENTRUN_CACHE:-$HOME/.cache/agentrun-operator}"
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
export GOWORK=off GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$root/bin" "$cache/bin"

log() { printf '[control-plane] %s\n' "$*" >&2; }

# install NAME VERSION: copy a cached build into bin/, answering whether it was there.
install_cached() {
  local name=$1 version=$2 cached="$cache/bin/$1-$2"
  [[ -x $cached ]] || return 1
  cp -f "$cached" "$root/bin/$name.tmp" && mv -f "$root/bin/$name.tmp" "$root/bin/$name"
}

build_kubernetes() {
  local v=$KUBERNETES_VERSION minor=${KUBERNETES_VERSION#v1.}
  minor=${minor%%.*}
  local staging="v0.${KUBERNETES_VERSION#v1.}" work="$cache/work/kubernetes-$v"
  if install_cached kube-apiserver "$v" && install_cached kube-controller-manager "$v" \
    && install_cached kubectl "$v"; then
    return
  fi
  mkdir -p "$work"

  # The kubernetes module requires its ~33 staging modules at v0.0.0 through replace
  # directives that only hold inside its own repository (kubernetes/kubernetes#79384).
  # A wrapper module pins each of them to the matching v0.X.Y; the list is read from
  # the kubernetes go.mod itself because it changes between minors.
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module agentrun.local/kubernetes-build"
    echo
    grep -E '^go ' "$gomod"
    echo
    echo "require k8s.io/kubernetes $v"
    echo
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 '"$staging"'#p' "$gomod"
  } > "$work/go.mod"
  cat > "$work/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubectl/pkg/cmd"
)
GO
  log "resolving k8s.io/kubernetes $v with staging modules at $staging"
  (cd "$work" && go mod tidy -e >/dev/null 2>"$work/tidy.log" || { cat "$work/tidy.log"; exit 1; })

  local date
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  for name in kube-apiserver kube-controller-manager kubectl; do
    install_cached "$name" "$v" && continue
    log "building $name $v (minutes on a small machine)"
    (cd "$work" && go build -trimpath -tags selinux,notest -ldflags "$ldflags" \
      -o "$cache/bin/$name-$v.tmp" "k8s.io/kubernetes/cmd/$name")
    mv -f "$cache/bin/$name-$v.tmp" "$cache/bin/$name-$v"
    install_cached "$name" "$v"
  done
}

build_etcd() {
  local v=$ETCD_VERSION work="$cache/work/etcd-$ETCD_VERSION"
  install_cached etcd "$v" && return
  mkdir -p "$work"
  # etcd's own main module carries replace directives too; a one-file main over the
  # server module builds cleanly.
  cat > "$work/go.mod" <<GO
module agentrun.local/etcd-build

go 1.26.0

require go.etcd.io/etcd/server/v3 $v
GO
  cat > "$work/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  log "building etcd $v"
  (cd "$work" && go mod tidy >/dev/null && go build -trimpath -ldflags "-s -w" -o "$cache/bin/etcd-$v.tmp" .)
  mv -f "$cache/bin/etcd-$v.tmp" "$cache/bin/etcd-$v"
  install_cached etcd "$v"
}

build_helm() {
  local v=$HELM_VERSION work="$cache/work/helm-$HELM_VERSION"
  install_cached helm "$v" && return
  # Its own module, so that helm's client-go cannot move the Kubernetes pins.
  mkdir -p "$work"
  printf 'module agentrun.local/helm-build\n\ngo 1.26.0\n' > "$work/go.mod"
  log "building helm $v"
  (cd "$work" && go get "helm.sh/helm/v4@$v" >/dev/null 2>&1 \
    && go build -trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$v" \
      -o "$cache/bin/helm-$v.tmp" helm.sh/helm/v4/cmd/helm)
  mv -f "$cache/bin/helm-$v.tmp" "$cache/bin/helm-$v"
  install_cached helm "$v"
}

build_etcd
build_kubernetes
build_helm
log "ready in $root/bin: $(cd "$root/bin" && ls | tr '\n' ' ')"
