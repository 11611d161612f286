#!/usr/bin/env bash
# Builds .gpu-data/shared: what the lent GPU machine needs from ../shared, small enough to carry (<= 64 MiB per
# call): the upstream weight files and the first PEOPLE LFW people (default 400, about 12 MB). It is ignored
# by git and never committed (../shared's rules); pass it to the run tool as carry [".gpu-data"].
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${FACEBANK_SHARED_DIR:-../shared}"
people="${1:-400}"
out=.gpu-data/shared
rm -rf .gpu-data && mkdir -p "$out/models" "$out/data/lfw"
cp "$shared"/models/*.pt "$shared"/models/*.pth "$out/models/"
mapfile -t everyone < <(find "$shared/data/lfw" -mindepth 1 -maxdepth 1 -type d | sort)
cp -r "${everyone[@]:0:$people}" "$out/data/lfw/"
du -sh .gpu-data
