#!/usr/bin/env bash
# Sets up a Debian 12 machine for cedanafs: Debian packages, a working CRIU 4.2 (built from
# Debian's 4.2.1-1 source package when no installed CRIU >= 4.2 passes `criu check`), and the
# virtualenv. CRIU 4.1 cannot dump inet sockets on kernels >= 6.16, so older ones are not used.
# Idempotent: each step checks whether it is already done.
set -euo pipefail

HERE="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$HERE/.venv}"
# Debian's own python3 by default, not whichever python3 comes first on PATH: Debian builds it with
# PGO and LTO, and pure Python runs ~2x as fast in it as in a plain source build (a pyenv one),
# which the mount server's per-request code and every command's start-up feel (measured: the
# mount server's CPU per GiB ingested 1.51 -> 1.02 s).
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ -x /usr/bin/python3 ] && PYTHON=/usr/bin/python3
fi
CRIU_VERSION="${CRIU_VERSION:-4.2.1}"
CRIU_DEB_VERSION="${CRIU_DEB_VERSION:-4.2.1-1}"
CRIU_BUILD_DIR="${CRIU_BUILD_DIR:-/var/cache/cedanafs/criu-build-$CRIU_VERSION}"
CRIU_PREFIX="${CRIU_PREFIX:-/usr/local}"
STAMP_DIR="${STAMP_DIR:-/var/cache/cedanafs}"
ZDTM_DIR="${ZDTM_DIR:-$STAMP_DIR/zdtm}"

DEB_PACKAGES=(
  fuse3 libfuse3-dev pkg-config iptables rsync busybox-static runc containerd procps iproute2 psmisc
  build-essential libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev libnl-3-dev
  libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler protobuf-compiler uuid-dev python3-protobuf
  git ca-certificates podman tmux b3sum python3 python3-venv python3-dev
)

log() { printf '[setup] %s\n' "$*"; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "setup: must run as root (it installs Debian packages and CRIU)" >&2
    exit 1
  fi
}

install_debian_packages() {
  local missing=()
  for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "Debian packages present"
    return
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Wait for another apt run (a second checkout's setup) instead of failing on its lock.
  local lock=(-o DPkg::Lock::Timeout=600)
  apt-get "${lock[@]}" update -qq
  apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

criu_works() {
  local bin="$1"
  [ -x "$bin" ] || return 1
  local v
  v="$("$bin" --version 2>/dev/null | awk '/Version:/ {print $2; exit}')"
  # Anything older than 4.2 fails on inet sockets with current kernels.
  [ "$(printf '%s\n%s\n' "4.2" "$v" | sort -V | head -n1)" = "4.2" ] || return 1
  "$bin" check >/dev/null 2>&1
}

find_working_criu() {
  for c in "$CRIU_PREFIX/sbin/criu" "$(command -v criu 2>/dev/null || true)"; do
    [ -n "$c" ] && criu_works "$c" && { echo "$c"; return 0; }
  done
  return 1
}

# The mirror comes from the machine's own apt sources, so no host is written down here.
apt_mirror() {
  local uri
  uri="$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | awk '{print $2}')"
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri="$(awk '$1=="deb" && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)"
  fi
  [ -n "$uri" ] || { echo "setup: no Debian mirror found in the apt sources" >&2; exit 1; }
  echo "$uri"
}

fetch_criu_source() {
  local work="$CRIU_BUILD_DIR/apt"
  mkdir -p "$work/lists/partial" "$CRIU_BUILD_DIR/src"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  local mirror
  mirror="$(apt_mirror)"
  {
    echo "deb-src [signed-by=$keyring] $mirror testing main"
    echo "deb-src [signed-by=$keyring] $mirror unstable main"
  } > "$work/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
              -o "Dir::State::Lists=$work/lists")
  log "fetching CRIU's source package $CRIU_DEB_VERSION from Debian testing/unstable"
  apt-get "${opts[@]}" update -qq
  (cd "$CRIU_BUILD_DIR/src" &&
    apt-get "${opts[@]}" source --download-only --tar-only "criu=$CRIU_DEB_VERSION" >/dev/null)
}

build_criu() {
  local orig
  orig="$(ls "$CRIU_BUILD_DIR"/src/criu_*.orig.tar.* 2>/dev/null | head -n1 || true)"
  [ -n "$orig" ] || fetch_criu_source
  orig="$(ls "$CRIU_BUILD_DIR"/src/criu_*.orig.tar.* | head -n1)"
  local tree="$CRIU_BUILD_DIR/tree"
  if [ ! -x "$tree/criu/criu" ] || [ ! -d "$tree/lib/pycriu" ]; then
    log "building CRIU from $(basename "$orig")"
    rm -rf "$tree" && mkdir -p "$tree"
    tar -xf "$orig" -C "$tree" --strip-components=1
    make -C "$tree" -j"$(nproc)" criu lib >"$CRIU_BUILD_DIR/build.log" 2>&1 || {
      tail -n 30 "$CRIU_BUILD_DIR/build.log" >&2
      echo "setup: CRIU build failed (log: $CRIU_BUILD_DIR/build.log)" >&2
      exit 1
    }
  fi
  install -D -m 0755 "$tree/criu/criu" "$CRIU_PREFIX/sbin/criu"
  ln -sfn "$tree" "$STAMP_DIR/criu-src"
}

ensure_criu() {
  local found
  if found="$(find_working_criu)"; then
    log "CRIU works: $found ($("$found" --version | head -n1))"
    # pycriu (and the zdtm programs) come from this version's source tree.
    [ -d "$CRIU_BUILD_DIR/tree/lib/pycriu" ] || build_criu
    ln -sfn "$CRIU_BUILD_DIR/tree" "$STAMP_DIR/criu-src"
    return
  fi
  build_criu
  if ! criu_works "$CRIU_PREFIX/sbin/criu"; then
    "$CRIU_PREFIX/sbin/criu" check || true
    echo "setup: the CRIU built from source does not pass 'criu check'" >&2
    exit 1
  fi
  log "CRIU installed: $CRIU_PREFIX/sbin/criu ($("$CRIU_PREFIX/sbin/criu" --version | head -n1))"
}

# CRIU's conformance programs (test/zdtm/static) that tests/test_zdtm.py runs, built from the same
# source tree into $ZDTM_DIR (only those listed in tests/zdtm/programs.txt: ~15 s on 2 cores).
ensure_zdtm() {
  local list="$HERE/tests/zdtm/programs.txt" stamp="$ZDTM_DIR/.programs" want names tmp
  want="$(cat "$list" "$STAMP_DIR/criu-src/Makefile.versions" 2>/dev/null | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "zdtm programs up to date: $ZDTM_DIR"
    return
  fi
  names="$(sed 's/#.*//' "$list" | awk 'NF {print $1}' | tr '\n' ' ')"
  log "building CRIU's zdtm programs into $ZDTM_DIR"
  tmp="$(mktemp -d "$STAMP_DIR/zdtm.build.XXXXXX")"
  cp -r "$STAMP_DIR/criu-src/test/zdtm/lib" "$STAMP_DIR/criu-src/test/zdtm/static" \
    "$STAMP_DIR/criu-src/test/zdtm/Makefile.inc" "$tmp/"
  # shellcheck disable=SC2086
  { make -C "$tmp/lib" -j"$(nproc)" libzdtmtst.a && make -C "$tmp/static" -j"$(nproc)" $names; } \
    >"$tmp/build.log" 2>&1 || {
    tail -n 30 "$tmp/build.log" >&2
    echo "setup: building the zdtm programs failed (log: $tmp/build.log)" >&2
    exit 1
  }
  echo "$want" > "$tmp/.programs"
  rm -rf "$ZDTM_DIR" && mv -T "$tmp" "$ZDTM_DIR"
}

ensure_venv() {
  local stamp="$VENV/.cedanafs-setup"
  local want python
  python="$(command -v "$PYTHON")" || { echo "setup: no $PYTHON to make the virtualenv with (set PYTHON=...)" >&2; exit 1; }
  python="$(readlink -f "$python")"
  want="$( (cat "$HERE/pyproject.toml" "$STAMP_DIR/criu-src/Makefile.versions" 2>/dev/null; echo "$python") |
    sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/cedana" ]; then
    log "virtualenv up to date: $VENV"
    return
  fi
  log "creating virtualenv $VENV (pip log: $VENV/pip.log)"
  if [ -x "$VENV/bin/python" ] && [ "$(readlink -f "$VENV/bin/python")" != "$python" ]; then
    log "the virtualenv was made with $(readlink -f "$VENV/bin/python"); making it again with $python"
    rm -rf "$VENV"
  fi
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  local pip=("$VENV/bin/pip" install -q --disable-pip-version-check)
  {
    "${pip[@]}" --upgrade pip wheel setuptools &&
    "${pip[@]}" "$STAMP_DIR/criu-src/lib" &&
    # A plain path entry for the checkout: the import hook of a default editable install
    # costs every `cedana` command ~13 ms at start-up. Where setuptools no longer offers it,
    # the default editable install does the same job.
    { "${pip[@]}" -e "$HERE[test]" --config-settings editable_mode=compat ||
      "${pip[@]}" -e "$HERE[test]"; }
  } >"$VENV/pip.log" 2>&1 || {
    grep -v '^WARNING: Location' "$VENV/pip.log" | tail -n 30 >&2
    echo "setup: installing the virtualenv failed (log: $VENV/pip.log)" >&2
    exit 1
  }
  echo "$want" > "$stamp"
}

main() {
  need_root
  mkdir -p "$STAMP_DIR"
  install_debian_packages
  ensure_criu
  ensure_zdtm
  ensure_venv
  log "ready"
}

main "$@"
