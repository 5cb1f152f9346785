#!/usr/bin/env bash
# Regenerate every file in src/sccircuits/assets (see its README.md). Order matters: the PBMC
# file maps symbols with the gene id table, and the demo models are trained on the PBMC file.
# Needs apt-get + dpkg (Debian/Ubuntu) for the GO step, scanpy 1.10.4's bundled h5ad (or pass a
# scanpy wheel to make_pbmc.py with --source) for the PBMC step. About 20 minutes on 1-2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
sccircuits genesets build-go --out src/sccircuits/assets/genesets
python scripts/make_pbmc.py
sccircuits pretrain-demo --kind both --out src/sccircuits/assets/models --seed 0
