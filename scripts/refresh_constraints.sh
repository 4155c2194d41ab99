#!/usr/bin/env bash
# Refresh constraints.txt, the lock file run.sh installs with: resolve today's newest versions in a
# throw-away virtual environment, exactly as run.sh installs (PyTorch first, then the package with
# its test and federated extras), and record every package's version except PyTorch's own build
# (torch, torchvision, triton, nvidia-*/cuda-*: run.sh pins those per machine architecture).
# Run the tests after a refresh (bash run.sh test) and commit constraints.txt only when they pass.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip
if [ "$(uname -m)" = "aarch64" ]; then
  "${pip[@]}" install -q torch==2.9.1 torchvision==0.24.1
else
  "${pip[@]}" install -q torch==2.14.1 torchvision==0.29.1
fi
extras=$("$PYTHON" -c "import tomllib; print(','.join(tomllib.load(open('pyproject.toml', 'rb'))['project'].get('optional-dependencies', {})))")
"${pip[@]}" install -q -e ".[${extras:-testing}]"
"${pip[@]}" check
{
  echo "# Lock file for run.sh and CI: the versions the test suite passed with (pip constraints)."
  echo "# Made by scripts/refresh_constraints.sh on $(date -u +%Y-%m-%d) with $("$work/venv/bin/python" -V)."
  echo "# PyTorch's build (torch, torchvision, triton, nvidia-*) is pinned by run.sh per architecture."
  "${pip[@]}" freeze --exclude-editable | grep -v -E '^(torch|torchvision|triton|nvidia-|cuda-)' | grep -v '^-e '
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "wrote constraints.txt ($(grep -c '==' constraints.txt) packages)"
