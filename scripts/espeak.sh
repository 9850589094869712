#!/usr/bin/env bash
# Installs Debian's espeak-ng (the phonemiser Piper voices were trained with) when it is absent.
# The text-to-speech task calls `espeak-ng` to turn text into IPA phonemes; its tests run this
# script first when the binary is missing.
set -euo pipefail

if command -v espeak-ng >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/espeak.sh: espeak-ng is not installed; run as root (or: sudo apt-get install espeak-ng)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q espeak-ng
command -v espeak-ng >/dev/null
