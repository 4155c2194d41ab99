#!/usr/bin/env bash
# One entry point for a fresh machine with Python 3.11:
#   bash run.sh demo   set up (idempotent), then run the demo (headless when there is no display)
#   bash run.sh test   same set-up, then run the test suite
# Extra arguments go to `vfmseg demo` or to pytest.
set -euo pipefail
cd "$(dirname "$0")"

task="${1:-}"
[ $# -gt 0 ] && shift
case "$task" in demo|test) ;; *) echo "usage: bash run.sh demo|test [args...]" >&2; exit 2 ;; esac

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV="${VFMSEG_VENV:-.venv}"  # .ci/run points this at a brand-new environment

# 1. Virtual environment, re-created only when missing or broken.
if ! "$VENV/bin/python" -c "import sys" 2>/dev/null; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# 2. PyTorch first (a pinned build that lies on local disk on our machines), then the package with
#    every other dependency at the version the tests passed with (constraints.txt, the lock file;
#    refresh it with scripts/refresh_constraints.sh, see docs/install.md).
CONSTRAINTS=()
[ -f constraints.txt ] && CONSTRAINTS=(-c constraints.txt)
stamp="$VENV/.vfmseg-installed-$(cat pyproject.toml constraints.txt 2>/dev/null | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  "${PIP[@]}" install -q --upgrade pip
  if [ "$(uname -m)" = "aarch64" ]; then
    "${PIP[@]}" install -q torch==2.9.1 torchvision==0.24.1
  else
    "${PIP[@]}" install -q torch==2.14.1 torchvision==0.29.1
  fi
  "${PIP[@]}" install -q "${CONSTRAINTS[@]}" -e ".[testing,federated]"
  rm -f "$VENV"/.vfmseg-installed-*
  touch "$stamp"
fi

# 3. napari renders with OpenGL: without a screen it needs a virtual display (Xvfb + Mesa).
if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && ! command -v xvfb-run >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing a virtual display (xvfb, Mesa, Qt's xcb libraries) with apt-get..."
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xauth libgl1-mesa-dri libegl1 \
      libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
      libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 \
      libdbus-1-3 libfontconfig1 >/dev/null
  else
    echo "warning: no display and no xvfb-run; install xvfb and Mesa (see docs/install.md)" >&2
  fi
fi

case "$task" in
  demo)
    exec "$VENV/bin/vfmseg" demo "$@"
    ;;
  test)
    set +e
    if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && command -v xvfb-run >/dev/null 2>&1; then
      xvfb-run -a -s "-screen 0 1600x1000x24" "$VENV/bin/python" -m pytest "$@"
    else
      "$VENV/bin/python" -m pytest "$@"
    fi
    code=$?
    if [ "$code" -eq 5 ]; then
      echo "error: pytest collected no tests" >&2
    fi
    exit "$code"
    ;;
esac
