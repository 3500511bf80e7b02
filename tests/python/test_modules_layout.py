"""The package's layout rules (docs/design.md §3.2, §8.15): one concern per module, no file over 400 lines,
no module reading another's private names, one definition of each file name, PEFT untouched on import."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import torch_neat

PKG = pathlib.Path(torch_neat.__file__).parent
SOURCES = sorted(PKG.glob("*.py"))
MAX_LINES = 400


def _tree(path: pathlib.Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_the_package_sources_are_found():
    names = {p.name for p in SOURCES}
    for expected in ("config.py", "layer.py", "merge.py", "precision.py", "model.py", "peft.py", "export.py",
                     "lora.py", "cli.py", "export_lora.py", "ops.py", "_optable.py"):
        assert expected in names, f"{expected} missing from {PKG}"


def test_no_module_is_over_the_line_limit():
    long = {p.name: n for p in SOURCES if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def _private_reads(path: pathlib.Path) -> list[str]:
    """``from .m import _x`` and ``m._x`` where ``m`` is a torch_neat module bound in this file."""
    tree, found, modules = _tree(path), [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            for alias in node.names:
                if node.module is None:  # from . import x [as y]: x is a module of the package
                    modules.add(alias.asname or alias.name)
                elif alias.name.startswith("_"):
                    found.append(f"{path.name}:{node.lineno}: from .{node.module} import {alias.name}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_reads_another_modules_private_names():
    found = [hit for p in SOURCES for hit in _private_reads(p)]
    assert not found, "private names read across modules:\n" + "\n".join(found)


def test_the_checker_sees_a_private_read(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from . import layer as _l\nfrom .model import _name_matches\nx = _l._act\n")
    hits = _private_reads(bad)
    assert len(hits) == 2 and any("_name_matches" in h for h in hits) and any("_l._act" in h for h in hits), hits


# attributes that belong to one module's objects; named in no other module of the package
OWNED_ATTRIBUTES = {
    "_merge_record": "layer.py",  # NeatLinear's; others use NeatLinear.merge_record
    "_act": "layer.py",  # NeatLinear's; others use NeatLinear.kernel_activation
    "_neat_merge_record": "peft.py",  # torch-neat's state on PEFT layers; others use peft.merge_state
    "_base_weight_before_merge": "peft.py",  # PEFT's private state, read by the bridge only
}


def test_owned_attributes_stay_in_their_module():
    found = []
    for path in SOURCES:
        for node in ast.walk(_tree(path)):
            name = node.attr if isinstance(node, ast.Attribute) else (
                node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None)
            if name in OWNED_ATTRIBUTES and OWNED_ATTRIBUTES[name] != path.name:
                found.append(f"{path.name}:{node.lineno}: {name} (owned by {OWNED_ATTRIBUTES[name]})")
    assert not found, "\n".join(found)


def test_each_file_name_is_defined_once():
    for literal in ("adapter_model.safetensors", "neat_config.json", "adapter_config.json"):
        where = [f"{p.name}:{node.lineno}" for p in SOURCES for node in ast.walk(_tree(p))
                 if isinstance(node, ast.Constant) and node.value == literal]
        assert len(where) == 1, f"{literal!r} is spelled out {len(where)} times: {where}"


def test_export_is_pure():
    # the conversion knows no model: it imports no module that patches, holds or loads one
    imported = set()
    for node in ast.walk(_tree(PKG / "export.py")):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            imported.add(node.module or "")
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert imported & {"layer", "model", "peft", "lora", "cli", "torch.nn", "transformers"} == set(), imported


def test_export_lora_is_a_thin_shim():
    tree = _tree(PKG / "export_lora.py")
    defs = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert defs == ["_CallableModule"], defs


def test_importing_the_peft_bridge_leaves_peft_untouched():
    code = (
        "from peft.tuners.peanut.layer import Linear as P\n"
        "before = dict(vars(P))\n"
        "import torch_neat.peft\n"
        "after = dict(vars(P))\n"
        "changed = sorted(k for k in set(before) | set(after) if before.get(k) is not after.get(k))\n"
        "print(changed)\n"
        "assert not changed, changed\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
