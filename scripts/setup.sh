#!/usr/bin/env bash
# Set up napari-featup on a fresh Debian/Ubuntu machine, from nothing:
# system libraries for a real or virtual (Xvfb + Mesa) display, a virtual
# environment in .venv, and the package with its GUI and test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(
  xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libfontconfig1 libdbus-1-3
  libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
  libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0
  libxi6 libxrender1
)
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    python3-venv "${SYSTEM_PACKAGES[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[all,testing]"
.venv/bin/python -c "import napari_featup, torch; print('napari-featup', napari_featup.__version__, '| torch', torch.__version__)"
