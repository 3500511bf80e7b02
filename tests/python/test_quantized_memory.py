"""Peak memory of a NEAT training step over a quantized base against the same model in float32 (issue 19,
docs/testing.md): each kind runs in a fresh process (quant_memory_probe.py) so no allocation of one run
hides in another's heap."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

LAYERS, D, N = 8, 2048, 32
PROBE = os.path.join(os.path.dirname(__file__), "quant_memory_probe.py")
W_FLOAT = D * D * 4  # one frozen float32 layer


def probe(kind: str) -> dict:
    # glibc keeps freed large blocks in its heap once its mmap threshold has grown; a fixed threshold makes
    # every tensor its own mapping, so RSS follows live memory
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, PROBE, kind, str(LAYERS), str(D), str(N)], env=env, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def float32_run():
    return probe("float32")


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_a_quantized_step_saves_what_the_weight_sizes_imply(float32_run, kind):
    q = probe(kind)
    f = float32_run
    assert f["weight_bytes"] == LAYERS * W_FLOAT
    implied = f["weight_bytes"] - q["weight_bytes"]
    assert implied > 0.7 * f["weight_bytes"], q
    saved = f["peak"] - q["peak"]
    assert saved >= 0.9 * implied, f"{kind}: peak {q['peak'] / 2**20:.0f} MiB vs float32 {f['peak'] / 2**20:.0f} MiB " \
        f"saves {saved / 2**20:.0f} MiB; the weights imply {implied / 2**20:.0f} MiB"
    # what the step itself allocates: the dequantizing products work panel by panel, never a float W
    extra = (q["peak"] - q["rss_before"]) - (f["peak"] - f["rss_before"])
    assert extra < W_FLOAT, f"{kind}: the step allocates {extra / 2**20:.1f} MiB more than float32's"
