#!/usr/bin/env bash
# Regenerate every file in src/sccircuits/assets (see its README.md). Order matters: the PBMC and
# blood files map symbols with the gene id table, the MSigDB sets update symbols with it, and
# the demo models are trained on the blood file.
# Needs apt-get + dpkg (Debian/Ubuntu) for the GO step, scanpy 1.10.4's bundled h5ad (or pass a
# scanpy wheel to make_pbmc.py with --source) for the PBMC step. Needs rdata + xarray for the blood step (pip install -e '.[assets]'). About 15 minutes on
# 2 idle CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
sccircuits genesets build-go --out src/sccircuits/assets/genesets
sccircuits genesets build-msigdb --out src/sccircuits/assets/genesets
python scripts/make_pbmc.py
python scripts/make_blood.py
sccircuits pretrain-demo --kind both --out src/sccircuits/assets/models --seed 0
