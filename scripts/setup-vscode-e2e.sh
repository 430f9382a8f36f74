#!/usr/bin/env bash
# Installs what the real-VS-Code end-to-end test needs and builds the extension's .vsix.
# Idempotent: every step is skipped when its result is already there, so a second run takes ~1 s.
#
#   Debian packages : chromium, ripgrep, libkrb5-dev, pkg-config (only when missing; needs root)
#   .e2e/vscode/tools: code-server 4.100.3 (VS Code 1.100.3; newer ones need Node 22) + playwright-core
#   editors/vscode   : npm ci (node_modules cached there), the copilot-ls wheel (dist/), tsc,
#                      vsce package -> .e2e/vscode/copilot-ls.vsix
#
# Prints the path of the .vsix on its last line. See shared recipe vscode-e2e.md for the pitfalls handled here.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
E2E="$ROOT/.e2e/vscode"
TOOLS="$E2E/tools"
EXT="$ROOT/editors/vscode"
VSIX="$E2E/copilot-ls.vsix"
CODE_SERVER_VERSION=4.100.3
PLAYWRIGHT_VERSION=1.65.1
RG_PKG_VERSION=1.15.11            # @vscode/ripgrep used by code-server 4.100.3
RG_ASSET=ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz

log() { echo "[setup-vscode-e2e] $*" >&2; }
mkdir -p "$E2E"

# --- 1. Debian packages --------------------------------------------------------------------------------
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v rg >/dev/null || need+=(ripgrep)
command -v make >/dev/null && command -v g++ >/dev/null || need+=(build-essential)
dpkg -s libkrb5-dev >/dev/null 2>&1 || need+=(libkrb5-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
if ((${#need[@]})); then
    log "installing Debian packages: ${need[*]}"
    SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v node >/dev/null || { log "node (20.x) is required"; exit 1; }

# --- 2. code-server + playwright-core --------------------------------------------------------------------
STAMP="$TOOLS/.installed-$CODE_SERVER_VERSION-$PLAYWRIGHT_VERSION"
if [[ ! -f "$STAMP" ]]; then
    log "installing code-server $CODE_SERVER_VERSION and playwright-core $PLAYWRIGHT_VERSION into $TOOLS (a few minutes)"
    # @vscode/ripgrep's postinstall downloads rg from GitHub (unreachable): seed its cache with Debian's rg.
    tmp="${TMPDIR:-/tmp}"
    cache="$tmp/vscode-ripgrep-cache-$RG_PKG_VERSION"
    if [[ ! -f "$cache/$RG_ASSET" ]]; then
        stage="$(mktemp -d)"
        cp "$(command -v rg)" "$stage/rg"
        mkdir -p "$cache"
        tar czf "$cache/$RG_ASSET" -C "$stage" rg
        rm -rf "$stage"
    fi
    mkdir -p "$TOOLS"
    [[ -f "$TOOLS/package.json" ]] || echo '{"name": "copilot-ls-vscode-e2e-tools", "private": true}' >"$TOOLS/package.json"
    # As root the postinstall stops without unsafe_perm; node-pty's postinstall runs `npx node-gyp` (needs yes).
    (cd "$TOOLS" && npm_config_yes=true npm_config_unsafe_perm=true npm install --no-audit --no-fund \
        --loglevel=error --foreground-scripts \
        "code-server@$CODE_SERVER_VERSION" "playwright-core@$PLAYWRIGHT_VERSION" >"$E2E/tools-install.log" 2>&1) \
        || { tail -40 "$E2E/tools-install.log" >&2; log "npm install of code-server failed (log: $E2E/tools-install.log)"; exit 1; }
    rm -f "$TOOLS"/.installed-*
    touch "$STAMP"
fi

# --- 3. the extension: dependencies, compile, package ------------------------------------------------------
lock_sum="$(sha256sum "$EXT/package-lock.json" | cut -c1-16)"
if [[ ! -f "$EXT/node_modules/.lock-$lock_sum" ]]; then
    log "npm ci in editors/vscode"
    (cd "$EXT" && npm ci --no-audit --no-fund --loglevel=error >&2)
    touch "$EXT/node_modules/.lock-$lock_sum"
fi
# The copilot-ls wheel that the extension's Install button installs travels in the .vsix (npm run wheel).
wheel="$(ls "$EXT"/dist/copilot_ls-*.whl 2>/dev/null | head -1 || true)"
if [[ -z "$wheel" || -n "$(find "$ROOT/pyproject.toml" "$ROOT/copilot_ls" "$ROOT/model_backend" -type f \
        -newer "$wheel" -not -name '*.pyc' 2>/dev/null | head -1)" ]]; then
    log "building the copilot-ls wheel into editors/vscode/dist"
    (cd "$EXT" && PYTHON="${PYTHON:-python3}" npm run --silent wheel 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2)
    ls "$EXT"/dist/copilot_ls-*.whl >/dev/null
fi
newest_src="$(find "$EXT/src" "$EXT/package.json" "$EXT/README.md" "$EXT/tsconfig.json" "$EXT/.vscodeignore" \
    "$EXT/media" "$EXT/dist" -type f -newer "$VSIX" 2>/dev/null | head -1 || true)"
if [[ ! -f "$VSIX" || -n "$newest_src" ]]; then
    log "building $VSIX"
    (cd "$EXT" && npm run --silent compile >&2 && npx --no-install vsce package --no-dependencies \
        --skip-license --allow-missing-repository --no-rewrite-relative-links -o "$VSIX" >&2 \
        || { rm -f "$VSIX"; exit 1; })
fi
echo "$VSIX"
