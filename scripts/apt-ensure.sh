#!/usr/bin/env bash
# apt-ensure.sh PACKAGE PROGRAM WITHOUT: install the Debian package PACKAGE unless PROGRAM (a
# path or a command name) is already there; best effort: when it cannot, print WITHOUT (what
# happens then) on stderr and go on. Used by ensure-wrk.sh and ensure-chromium.sh.
set -u
package=$1 program=$2 without=$3
if [ -x "$program" ] || command -v "$program" >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no apt-get: install $package by hand, or $without" >&2
  exit 0
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
$SUDO apt-get install -y "$package" >/dev/null 2>&1 \
  || { $SUDO apt-get update >/dev/null 2>&1 && $SUDO apt-get install -y "$package" >/dev/null 2>&1; } \
  || echo "could not install $package; $without" >&2
