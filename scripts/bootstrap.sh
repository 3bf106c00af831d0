#!/usr/bin/env bash
# Installs the Debian packages the project needs (idempotent; quick when all are present).
# Python and npm packages are installed by the Makefile from pyproject.toml / package-lock.json.
set -euo pipefail

# pdftoppm renders certificates to PNG in tests; chromium drives dashboard tests;
# php-tcpdf is the baseline the certificate benchmark compares against; the Noto fonts are
# the sources of the certificate renderer's font subsets (scripts/build_certificate_fonts.py);
# nginx-light, apache2-bin, logrotate and systemd (systemd-analyze) check the shipped examples
# under deploy/.
PACKAGES=(poppler-utils chromium php-cli php-tcpdf fonts-noto-core fonts-noto-cjk nginx-light apache2-bin logrotate systemd)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  echo "bootstrap: please install these Debian packages as root: ${missing[*]}" >&2
  exit 1
fi
echo "bootstrap: installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
