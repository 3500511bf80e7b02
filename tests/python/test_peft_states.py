"""torch_neat.peft and PEFT's own code on one model: every order of install, accelerate, merge, uninstall and
unmerge leaves each PEANuT layer in a state whichever code runs it next handles, with PEFT's numbers.

A layer merged by torch-neat keeps a factor record (``_neat_merge_record``) and no weight copy; one merged by
PEFT keeps ``_base_weight_before_merge``. Each step is mirrored on a pure-PEFT reference model (its layers'
methods are PEFT's whatever install() does) and the two are compared after every step.
"""

from __future__ import annotations

import copy
import itertools
import pickle
import warnings

import pytest
import torch

from peft import PeanutConfig
from peft.tuners.peanut.layer import Linear as PeanutLinear

import torch_neat.peft as neat_peft
from hf_helpers import MODEL_TOL, assert_bitwise, assert_rel, inputs_for, logits
from test_peft import peanut_model

_METHODS = ("forward", "merge", "unmerge", "get_delta_weight")
assert not neat_peft.is_installed(), "a test left torch_neat.peft installed"
assert all(PeanutLinear.__dict__[n].__module__ == PeanutLinear.__module__ for n in _METHODS)
# PEFT's own PEANuT layer, out of install()'s reach: its methods live on this subclass
PeftOnly = type("PeftOnly", (PeanutLinear,), {n: PeanutLinear.__dict__[n] for n in _METHODS})

MERGED_TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


@pytest.fixture(autouse=True)
def _uninstalled():
    assert not neat_peft.is_installed()
    yield
    neat_peft.uninstall()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # ~600 sequences of tiny matmuls: intra-op threads only add overhead (20x on a loaded 2-core runner)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, PeanutLinear)}


_TEMPLATES: dict = {}


def template(dtype, two_adapters):
    key = (dtype, two_adapters)
    if key not in _TEMPLATES:
        model = peanut_model(depth=1, act="gelu", dtype=dtype)
        if two_adapters:
            model.add_adapter("second", PeanutConfig(r=2, depth=0, act_fn="tanh", scaling=0.7, init_weights=False,
                                                     target_modules=["q_proj", "k_proj"]))
            model.base_model.set_adapter(["default", "second"])
        _TEMPLATES[key] = model
    return _TEMPLATES[key]


class Pair:
    """Our model (what the events act on) and a pure-PEFT copy that mirrors its merges and unmerges."""

    def __init__(self, dtype=torch.float64, two_adapters=False, safe_merge=False):
        self.ours = copy.deepcopy(template(dtype, two_adapters))
        self.ref = copy.deepcopy(self.ours)
        for layer in layers(self.ref).values():
            layer.__class__ = PeftOnly
        self.dtype, self.safe_merge = dtype, safe_merge
        self.inputs = inputs_for("llama", dtype=dtype)
        self.x = torch.randn(5, self.ours.config.hidden_size, dtype=dtype, generator=torch.Generator().manual_seed(7))
        self.state0 = {k: v.clone() for k, v in self.ours.state_dict().items()}
        self.history: list[str] = []

    # -- events (names as used in the parametrisations) -------------------------------------------------

    def do(self, event: str) -> None:
        self.history.append(event)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PEFT's "Already unmerged" / "already merged" notes
            if event == "install":
                neat_peft.install()
            elif event == "uninstall":
                neat_peft.uninstall()
            elif event == "accelerate":
                neat_peft.accelerate(self.ours)
            elif event.startswith("merge"):
                names = None if event == "merge" else [event.partition(":")[2]]
                for model in (self.ours, self.ref):
                    model.merge_adapter(adapter_names=names, safe_merge=self.safe_merge)
            elif event == "unmerge":
                for model in (self.ours, self.ref):
                    model.unmerge_adapter()
            else:
                raise AssertionError(event)
        self.check(full_model=False)

    # -- the invariants -----------------------------------------------------------------------------------

    def check(self, full_model: bool = True) -> None:
        """Every PEANuT layer: flags, weights and merge state vs the reference, and its output; the logits too."""
        what = " -> ".join(self.history)
        ref_layers = layers(self.ref)
        base_weights = set()
        for name, layer in layers(self.ours).items():
            ref = ref_layers[name]
            key = f"{name}.base_layer.weight"
            base_weights.add(key)
            w0, w = self.state0[key], layer.get_base_layer().weight
            record = layer.__dict__.get("_neat_merge_record")
            copy_ = layer._base_weight_before_merge
            with torch.no_grad():
                assert_rel(layer(self.x), ref(self.x), MODEL_TOL[self.dtype], f"{what}: {name} output")
            assert layer.merged_adapters == ref.merged_adapters, f"{what}: {name} merged_adapters"
            assert layer.merged == ref.merged, f"{what}: {name} merged"
            if not layer.merged:
                assert_bitwise(w, w0, f"{what}: unmerged {key}")
                assert record is None, f"{what}: {name} unmerged but keeps torch-neat's merge record"
                if copy_ is not None:  # PEFT's merge of no adapter of this layer leaves its copy; must be W0
                    assert_bitwise(copy_, w0, f"{what}: {name} PEFT's copy left while unmerged")
                continue
            assert_rel(w, ref.get_base_layer().weight, MERGED_TOL[self.dtype], f"{what}: merged {key} vs PEFT's")
            assert (record is None) != (copy_ is None), f"{what}: {name} must hold exactly one merge state"
            if copy_ is not None:
                assert_bitwise(copy_, w0, f"{what}: {name} PEFT's copy of the original weight")
            else:  # merged by torch-neat: only torch-neat's code may meet it
                assert neat_peft._runs_neat(layer), f"{what}: PEFT's code runs {name}, merged by torch-neat"
        for key, v in self.ours.state_dict().items():
            if key not in base_weights:
                assert_bitwise(v, self.state0[key], f"{what}: {key}")
        if full_model:
            with torch.no_grad():
                assert_rel(logits(self.ours, self.inputs), logits(self.ref, self.inputs), MODEL_TOL[self.dtype],
                           f"{what}: logits")

    def finish(self) -> None:
        """The logits; then unmerge, and PEFT alone merges and unmerges again from the original W."""
        self.check()
        for event in ("unmerge", "uninstall", "merge", "unmerge"):
            self.do(event)
        self.check()


def run(events, **kwargs) -> Pair:
    pair = Pair(**kwargs)
    for event in events:
        pair.do(event)
    return pair


EVENTS = ("install", "merge", "uninstall", "unmerge")
REPEATS = ("merge", "unmerge", "merge", "merge", "unmerge", "unmerge")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("safe_merge", [False, True], ids=["merge", "safe_merge"])
@pytest.mark.parametrize("events", list(itertools.permutations(EVENTS)), ids="-".join)
def test_every_order_of_install_merge_uninstall_unmerge(events, safe_merge, dtype):
    # the permutation, then merge/unmerge repeated in whatever install state it left, then PEFT alone
    run([*events, *REPEATS], dtype=dtype, safe_merge=safe_merge).finish()


@pytest.mark.parametrize("events", list(itertools.product(["install", "uninstall", "merge", "unmerge"], repeat=4)),
                         ids="-".join)
def test_every_word_of_four_events(events):
    # repetitions included: install twice, merge twice, unmerge before merge, ...
    run(events).finish()


@pytest.mark.parametrize("events", list(itertools.permutations(("install", "merge:default", "uninstall",
                                                                 "merge:second", "unmerge"))), ids="-".join)
def test_every_order_two_adapters(events):
    # one adapter merged by one code, the next by the other: each delta must come from the original W
    run(events, two_adapters=True).finish()


@pytest.mark.parametrize("events", list(itertools.permutations(("install", "accelerate", "merge", "uninstall",
                                                                 "unmerge"))), ids="-".join)
def test_every_order_with_accelerate(events):
    run([*events, *REPEATS]).finish()


def test_issue_uninstall_then_unmerge():
    """The reported bug: merged while installed, uninstalled, unmerged by PEFT's code."""
    pair = run(["install", "merge", "uninstall"])
    merged = {n: m.get_base_layer().weight.clone() for n, m in layers(pair.ours).items()}
    for name, layer in layers(pair.ours).items():  # still merged, same W, in PEFT's state
        assert layer.merged and layer.__dict__.get("_neat_merge_record") is None, name
        assert_bitwise(layer.get_base_layer().weight, merged[name], name)
    pair.do("unmerge")  # was: AttributeError: 'NoneType' object has no attribute 'to'
    pair.finish()


def test_issue_peft_merges_more_after_uninstall():
    """The other half: PEFT must not take the merged W for the original."""
    pair = run(["install", "merge:default", "uninstall", "merge:second", "unmerge"], two_adapters=True)
    pair.finish()


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_uninstall_hands_over_copies_of_merged_models(how):
    pair = run(["install", "merge"])
    # a copy carries the record; uninstall must find it too
    clone = copy.deepcopy(pair.ours) if how == "deepcopy" else pickle.loads(pickle.dumps(pair.ours))
    pair.do("uninstall")
    for name, layer in layers(clone).items():
        assert layer.__dict__.get("_neat_merge_record") is None, name
        assert_bitwise(layer._base_weight_before_merge, pair.state0[f"{name}.base_layer.weight"], name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clone.unmerge_adapter()
    for key, v in clone.state_dict().items():
        assert_bitwise(v, pair.state0[key], f"copy {key}")


def test_uninstall_leaves_accelerated_layers_with_torch_neat():
    pair = run(["accelerate", "install", "merge", "uninstall"])
    for name, layer in layers(pair.ours).items():
        assert layer.__dict__.get("_neat_merge_record") is not None, f"{name}: accelerated layer handed over"
        assert layer._base_weight_before_merge is None, f"{name}: PEFT's weight copy made"
    pair.finish()


def test_merge_by_torch_neat_drops_peft_stale_copy():
    # PEFT's merge of an adapter a layer lacks still copies that layer's W (and merges nothing into it)
    pair = run(["merge:second"], two_adapters=True)
    v_layers = {n: m for n, m in layers(pair.ours).items() if "v_proj" in n}
    assert all(m._base_weight_before_merge is not None and not m.merged for m in v_layers.values()), "PEFT changed"
    pair.do("install")
    pair.do("merge:default")  # torch-neat's code on v_proj, PEFT's on q_proj (merged by PEFT)
    for name, m in v_layers.items():
        assert m._neat_merge_record is not None and m._base_weight_before_merge is None, name
    pair.do("uninstall")
    pair.finish()
