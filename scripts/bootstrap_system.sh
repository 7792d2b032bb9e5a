#!/usr/bin/env bash
# Installs the system tools the node shells out to: ffmpeg/ffprobe (encode, decode, probe) and
# espeak-ng (offline TTS). Debian packages when we are root with apt; otherwise the node falls
# back to the pip wheels (imageio-ffmpeg for ffmpeg, espeakng-loader for espeak-ng), so a failure
# here is reported, not fatal.
set -u
missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)  # tests/fleet start their own
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)  # redis-cli --cluster create (tests)
[ ${#missing[@]} -eq 0 ] && exit 0
pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "bootstrap: installing Debian packages: $pkgs"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends $pkgs; } >/tmp/lipsync-node-apt.log 2>&1 \
    || echo "bootstrap: apt-get failed (see /tmp/lipsync-node-apt.log); using the pip fallbacks"
else
  echo "bootstrap: $pkgs not installed and apt-get is not usable; using the pip fallbacks"
fi
exit 0
