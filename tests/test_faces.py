"""The bdev layer's two faces (docs/bdev.md): drivers/ and tools/ reach the layer only
through ``bdev.api`` (``import bdev`` re-exports it) and ``bdev.module``; both list their
exports in ``__all__``; and bdev/ depends on neither drivers/ nor tools/.  targets/ (bdev
*users*, docs/targets.md) reach it through ``bdev.api`` only, never ``bdev.module`` nor a
private room, import nothing of drivers/, and their layers point down only
(iscsi -> scsi -> serve, nbd -> serve).

Imports are read with ``ast`` (every import statement, those inside functions included,
and ``importlib.import_module("...")`` with a literal name), not by grepping text."""
import ast
import importlib
import pathlib
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FACES = {"bdev": "bdev.api", "bdev.api": "bdev.api", "bdev.module": "bdev.module"}


def _sources(*dirs):
    for d in dirs:
        for p in sorted((ROOT / d).rglob("*.py")):
            yield p, ast.parse(p.read_text(), filename=str(p))


def _package_of(path: pathlib.Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])


def imported_modules(path, tree):
    """``(lineno, dotted module name)`` for every module ``tree`` imports; ``from M import
    n`` yields ``M.n`` when that is a module and ``M`` otherwise, relative imports are
    resolved against the file's package."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package_of(path).split(".")
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                yield node.lineno, sub if _is_module(sub) else base
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def private_bdev_imports(dirs=("drivers", "tools")):
    bad = []
    for path, tree in _sources(*dirs):
        for lineno, mod in imported_modules(path, tree):
            if (mod == "bdev" or mod.startswith("bdev.")) and mod not in FACES:
                bad.append(f"{path.relative_to(ROOT)}:{lineno}: imports {mod}")
    return bad


def test_drivers_and_tools_import_only_the_two_faces():
    assert private_bdev_imports() == []


def test_the_import_check_catches_every_spelling(tmp_path):
    """The checker itself: each way of reaching a private module is reported."""
    spellings = ["from bdev import _registry", "import bdev._qos", "import bdev._stats as s",
                 "from bdev._bcast import to_main", "from bdev import api, _const",
                 "def f():\n    from bdev import _submit", "import importlib\n"
                 "importlib.import_module('bdev._types')"]
    for src in spellings:
        p = ROOT / "drivers" / "_face_probe.py"
        tree = ast.parse(src)
        mods = [m for _, m in imported_modules(p, tree)]
        assert any(m.startswith("bdev._") for m in mods), (src, mods)
    ok = ast.parse("import bdev\nfrom bdev import api\nfrom bdev import module as bm\n"
                   "import bdev.api as api\nfrom bdev import get_by_name\n")
    assert all(m in FACES for _, m in imported_modules(ROOT / "drivers" / "x.py", ok))


def _face_aliases(tree):
    """Names bound in ``tree`` to a face module: alias -> face module name (a bare
    ``import bdev`` / ``import bdev.api`` binds the package, i.e. the user API)."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname and a.name in FACES:
                    out[a.asname] = FACES[a.name]
                elif not a.asname and a.name.split(".")[0] == "bdev":
                    out["bdev"] = "bdev.api"
        elif isinstance(node, ast.ImportFrom) and node.module == "bdev" and not node.level:
            for a in node.names:
                if a.name in ("api", "module"):
                    out[a.asname or a.name] = f"bdev.{a.name}"
    return out


def test_drivers_tools_and_targets_use_only_exported_names():
    """``api.X`` / ``bm.X`` / ``bdev.X`` in drivers/, tools/ and targets/ name something the
    face exports (``__all__``): no reaching through the package for a private room
    (``bdev._registry``...)."""
    bad = []
    for path, tree in _sources("drivers", "tools", "targets"):
        aliases = _face_aliases(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in FACES and not node.level:
                names = [a.name for a in node.names if a.name not in ("api", "module")]
                face = importlib.import_module(FACES[node.module])
                bad += [f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {n}"
                        for n in names if n not in face.__all__]
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases):
                face = importlib.import_module(aliases[node.value.id])
                if node.value.id == "bdev" and node.attr in ("api", "module"):
                    continue          # bdev.api.X / bdev.module.X: the face itself
                if node.attr not in face.__all__:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: "
                               f"{node.value.id}.{node.attr} is not in {face.__name__}.__all__")
    assert bad == []


@pytest.mark.parametrize("name", ["bdev.api", "bdev.module"])
def test_all_lists_exactly_the_public_names(name):
    mod = importlib.import_module(name)
    exported = mod.__all__
    assert len(exported) == len(set(exported)), "duplicates in __all__"
    missing = [n for n in exported if not hasattr(mod, n)]
    assert missing == [], f"{name}.__all__ names what it does not have: {missing}"
    public = {n for n, v in vars(mod).items()
              if not n.startswith("_") and not isinstance(v, types.ModuleType)
              and n != "annotations"}
    assert public - set(exported) == set(), f"public in {name} but not in __all__"


def test_bdev_package_reexports_the_user_api():
    import bdev
    import bdev.api
    assert list(bdev.__all__) == list(bdev.api.__all__)
    assert all(getattr(bdev, n) is getattr(bdev.api, n) for n in bdev.api.__all__)



# ------------------------------------------------------------------ targets/ are bdev users
TARGET_LAYERS = {"serve": set(), "nbd": {"serve"}, "scsi": {"serve"}, "iscsi": {"scsi", "serve"}}


def target_import_problems(dirs=("targets",)):
    """What a module under targets/ must not import: bdev.module or a private room of bdev
    (only ``bdev.api``, or ``bdev`` which re-exports it), anything of drivers/, or a target
    package above or beside its own (docs/targets.md layering)."""
    bad = []
    for path, tree in _sources(*dirs):
        parts = path.relative_to(ROOT).parts
        own = parts[1] if len(parts) > 2 else None
        for lineno, mod in imported_modules(path, tree):
            where = f"{path.relative_to(ROOT)}:{lineno}: imports {mod}"
            top = mod.split(".")
            if top[0] == "bdev" and mod not in ("bdev", "bdev.api"):
                bad.append(where + " (targets use bdev.api only)")
            elif top[0] == "drivers":
                bad.append(where + " (a target is not a bdev module)")
            elif top[0] == "targets" and len(top) > 1 and own is not None and top[1] != own \
                    and top[1] in TARGET_LAYERS and top[1] not in TARGET_LAYERS.get(own, set()):
                bad.append(where + f" (targets/{own} may use only {sorted(TARGET_LAYERS.get(own, ()))})")
    return bad


def test_targets_import_only_bdev_api_and_their_lower_layers():
    assert (ROOT / "targets" / "serve").is_dir() and (ROOT / "targets" / "nbd").is_dir()
    assert target_import_problems() == []


def test_the_target_check_catches_each_violation():
    """The checker itself, on probe files placed in the tree (removed afterwards)."""
    cases = {("serve", "from bdev import module as bm"): "bdev.module",
             ("serve", "import bdev._registry"): "bdev._registry",
             ("nbd", "from drivers import malloc"): "drivers",
             ("nbd", "def f():\n    import drivers.error"): "drivers.error",
             ("serve", "from targets.nbd import connection"): "targets.nbd",
             ("serve", "from ..nbd import rpc"): "targets.nbd",
             ("nbd", "import targets.iscsi"): "targets.iscsi",
             ("scsi", "from targets import iscsi"): "targets.iscsi"}
    for (pkg, src), expect in cases.items():
        probe = ROOT / "targets" / pkg / "_face_probe.py"
        if not probe.parent.is_dir():
            continue
        probe.write_text(src + "\n")
        try:
            found = [b for b in target_import_problems() if "_face_probe" in b]
        finally:
            probe.unlink()
        assert found and expect in found[0], (pkg, src, found)
    ok = ROOT / "targets" / "nbd" / "_face_probe.py"
    ok.write_text("import bdev.api as api\nimport bdev\nfrom bdev import api\n"
                  "from targets.serve import bdev_handle\nfrom ..serve import bdev_handle\n")
    try:
        assert [b for b in target_import_problems() if "_face_probe" in b] == []
    finally:
        ok.unlink()


def test_bdev_imports_neither_drivers_nor_tools():
    bad = [f"{p.relative_to(ROOT)}:{ln}: imports {m}"
           for p, tree in _sources("bdev") for ln, m in imported_modules(p, tree)
           if m.split(".")[0] in ("drivers", "tools")]
    assert bad == []


# ------------------------------------------------------------------ the rooms of bdev/
BDEV_MAX_LINES = 900


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def bdev_import_graph() -> dict:
    """bdev module -> the bdev modules it imports, every import statement counted (those
    inside functions too).  The implicit import of a parent package is not an edge."""
    graph = {}
    for path, tree in _sources("bdev"):
        mod = _module_name(path)
        graph[mod] = sorted({m for _, m in imported_modules(path, tree)
                             if (m == "bdev" or m.startswith("bdev.")) and m != mod})
    return graph


def find_cycle(graph: dict):
    """A cycle of ``graph`` as a list ``[a, b, ..., a]``, or None."""
    state = {}                     # 1: on the current path, 2: done
    path = []

    def visit(n):
        state[n] = 1
        path.append(n)
        for m in graph.get(n, ()):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_bdev_module_passes_900_lines():
    """bdev/ is cut into rooms along the seams of bdev.c (docs/bdev.md): none may grow
    past ~900 lines (split it along its next seam instead)."""
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / "bdev").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > BDEV_MAX_LINES}
    assert long == {}


def test_bdev_imports_form_a_dag():
    """Lower rooms never import higher ones (module- or function-level); where a lower
    room must call up (QoS, statistics, the reset's completion) it goes through a stage
    the higher room installs (bdev/_stages.py)."""
    graph = bdev_import_graph()
    assert "bdev._types" in graph and "bdev._qos" in graph      # the parse found the rooms
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_check_finds_cycles():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None
    tree = ast.parse("def f():\n    from . import _qos\n")
    mods = [m for _, m in imported_modules(ROOT / "bdev" / "_types.py", tree)]
    assert mods == ["bdev._qos"]                                 # a function-level import


def test_every_stage_entry_is_installed():
    import bdev  # noqa: F401  (imports every room)
    from bdev import _stages
    assert _stages.missing() == []
