#!/usr/bin/env bash
# Installs face_recognition (dlib) into the project's venv, pinned, without compiling dlib:
# face-recognition 1.3.0 requires the distribution `dlib` by name, which the prebuilt dlib-bin wheel does not
# satisfy, so pip would build dlib from source. Usage: bash bench/install-peers.sh [VENV] (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
"$venv/bin/pip" install -q -e '.[peers]'
"$venv/bin/pip" install -q --no-deps 'face-recognition==1.3.0'
"$venv/bin/python" -c 'from models.evaluation.peers import import_face_recognition, peer_version; import_face_recognition(); print("peers:", peer_version())'
