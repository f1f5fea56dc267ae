#!/usr/bin/env bash
# `make install`: cedanafs in its own virtualenv that every user can read (INSTALL_VENV, default
# /opt/cedanafs), `cedana` linked into PREFIX/bin (default /usr/local/bin, where contrib/cedana.service
# runs it), the systemd unit into SYSTEMD_DIR and the man pages into PREFIX/share/man/man1.
# Needs `make setup` first (for pycriu from the CRIU source tree). Idempotent.
set -euo pipefail

HERE="$(cd "$(dirname "$0")/.." && pwd)"
INSTALL_VENV="${INSTALL_VENV:-/opt/cedanafs}"
PREFIX="${PREFIX:-/usr/local}"
SYSTEMD_DIR="${SYSTEMD_DIR:-/etc/systemd/system}"
STAMP_DIR="${STAMP_DIR:-/var/cache/cedanafs}"
DEV_VENV="${VENV:-$HERE/.venv}"

log() { printf '[install] %s\n' "$*"; }

# Whether every user can run PATH: the file and each directory above it are open to others.
everyone_can_run() {
  local p
  p="$(readlink -f "$1")" || return 1
  [ -x "$p" ] && [ "$(( 0$(stat -c %a "$p") & 1 ))" = 1 ] || return 1
  while [ "$p" != / ]; do
    p="$(dirname "$p")"
    [ "$(( 0$(stat -c %a "$p") & 1 ))" = 1 ] || return 1
  done
}

# The virtualenv must not point into a root-only directory (a pyenv under /root, say): prefer the
# system's python3, which every user can run.
pick_python() {
  local c
  for c in "${PYTHON:-}" /usr/bin/python3 "$(command -v python3 || true)"; do
    [ -n "$c" ] || continue
    if everyone_can_run "$c" && "$c" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$c"
      return
    fi
  done
  echo "install: no Python >= 3.11 with venv that every user can run (set PYTHON=...)" >&2
  exit 1
}
PYTHON="$(pick_python)"

log "virtualenv $INSTALL_VENV ($PYTHON)"
umask 022
[ -x "$INSTALL_VENV/bin/python" ] || "$PYTHON" -m venv "$INSTALL_VENV"
pip=("$INSTALL_VENV/bin/pip" install -q --disable-pip-version-check)
{
  "${pip[@]}" "$STAMP_DIR/criu-src/lib" &&
  "${pip[@]}" --force-reinstall --no-deps "$HERE" &&
  "${pip[@]}" "$HERE"
} >"$INSTALL_VENV/pip.log" 2>&1 || {
  grep -v '^WARNING: Location' "$INSTALL_VENV/pip.log" | tail -n 30 >&2
  echo "install: pip failed (log: $INSTALL_VENV/pip.log)" >&2
  exit 1
}
chmod -R a+rX "$INSTALL_VENV"  # any user may run cedana (the daemon decides what they may do)

mkdir -p "$PREFIX/bin"
ln -sfn "$INSTALL_VENV/bin/cedana" "$PREFIX/bin/cedana"
log "cedana -> $PREFIX/bin/cedana"

if [ -x "$DEV_VENV/bin/python" ]; then
  "$DEV_VENV/bin/python" -m cedanafs.cli.docgen --man "$PREFIX/share/man/man1" >/dev/null
  log "man pages in $PREFIX/share/man/man1"
fi

if [ -d "$SYSTEMD_DIR" ]; then
  sed "s#^ExecStart=.*#ExecStart=$PREFIX/bin/cedana daemon start#" "$HERE/contrib/cedana.service" \
    > "$SYSTEMD_DIR/cedana.service"
  chmod 0644 "$SYSTEMD_DIR/cedana.service"
  log "unit $SYSTEMD_DIR/cedana.service (systemctl daemon-reload && systemctl enable --now cedana)"
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl daemon-reload || true
  fi
fi
