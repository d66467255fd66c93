"""The method table: Param/Schema validation, CLI conversion, registration rules, docs."""
import pytest

from reactor.rpc import docs as rpc_docs
from reactor.rpc import (ANY, METHODS, RAW, RUNTIME, STARTUP, MethodTable, Param, ParamError,
                         Schema, version_info)


def test_schema_validates_and_fills_defaults():
    s = Schema(Param("name", str), Param("size", int, min=1), Param("ro", bool, default=False),
               Param("tags", list, items=str, default=[]), Param("x", ANY, required=False))
    out = s.validate({"name": "a", "size": 3})
    assert out == {"name": "a", "size": 3, "ro": False, "tags": [], "x": None}
    out["tags"].append("mutated")
    assert s.validate({"name": "a", "size": 3})["tags"] == []     # defaults are not shared
    assert s.validate({"name": "a", "size": 3, "x": {"any": [1]}})["x"] == {"any": [1]}


@pytest.mark.parametrize("params, param, text", [
    ({"size": 1}, "name", "missing required parameter 'name'"),
    ({"name": "a", "size": 0}, "size", "parameter 'size' must be >= 1, got 0"),
    ({"name": "a", "size": "1"}, "size", "parameter 'size' must be an integer, got string"),
    ({"name": "a", "size": 1, "ro": 1}, "ro", "parameter 'ro' must be a boolean, got integer"),
    ({"name": "a", "size": 1, "tags": "t"}, "tags", "parameter 'tags' must be an array of string"),
    ({"name": "a", "size": 1, "nope": 1}, "nope", "unknown parameter 'nope'"),
])
def test_schema_errors_name_the_parameter(params, param, text):
    s = Schema(Param("name", str), Param("size", int, min=1), Param("ro", bool, default=False),
               Param("tags", list, items=str, required=False))
    with pytest.raises(ParamError) as ei:
        s.validate(params)
    assert ei.value.param == param
    assert text in str(ei.value)


def test_no_param_schema():
    s = Schema()
    assert s.validate(None) == {} and s.validate({}) == {}
    with pytest.raises(ParamError, match="takes no parameters"):
        s.validate({"a": 1})
    with pytest.raises(ParamError, match="must be an object"):
        s.validate([1])


def test_cli_conversion():
    assert Param("n", int).from_cli(["0x10"]) == 16
    assert Param("n", int).from_cli(["-3"]) == -3
    assert Param("f", float).from_cli(["1e3"]) == 1000.0
    assert Param("b", bool).from_cli(["Yes"]) is True
    assert Param("b", bool).from_cli(["0"]) is False
    assert Param("l", list, items=int).from_cli(["1", "2"]) == [1, 2]
    assert Param("l", list).from_cli(['["a", 1]']) == ["a", 1]
    assert Param("d", dict).from_cli(['{"a": 1}']) == {"a": 1}
    assert Param("s", str, choices=("a", "b")).from_cli(["b"]) == "b"
    for p, tok in [(Param("n", int), "x"), (Param("b", bool), "maybe"),
                   (Param("d", dict), "[1]"), (Param("s", str, choices=("a",)), "z")]:
        with pytest.raises(ParamError):
            p.from_cli([tok])


def test_param_declaration_errors():
    with pytest.raises(TypeError):
        Param("x", set)
    with pytest.raises(TypeError):
        Param("x", int, required=True, default=1)
    with pytest.raises(TypeError):
        Schema(Param("a"), Param("a"))


def test_table_rules():
    t = MethodTable()
    t.register("m", lambda r, p: None, params=[Param("a", int)], states=STARTUP)
    with pytest.raises(ValueError, match="twice"):
        t.register("m", lambda r, p: None)
    with pytest.raises(ValueError, match="states"):
        t.register("bad_state", lambda r, p: None, states=0)
    t.alias("old_m", "m")
    with pytest.raises(ValueError):
        t.alias("x", "missing")
    with pytest.raises(ValueError):
        t.alias("y", "old_m")
    assert t.names() == ["m"]
    assert t.names(include_aliases=True) == ["m", "old_m"]
    assert t.names(state=RUNTIME) == []
    assert t.resolve("old_m").name == "m"
    t.register("raw", lambda r, p: None, params=RAW)
    assert t.get("raw").validate([1, 2]) == [1, 2]
    t.unregister("m")
    assert "m" not in t and "old_m" not in t


def test_builtins_and_version_shape():
    assert {"rpc_get_methods", "spdk_get_version"} <= set(METHODS.names())
    own = MethodTable(builtins=True)
    assert own.names() == ["rpc_get_methods", "spdk_get_version"]
    v = version_info()
    assert v["version"].startswith("ringstack v")
    assert sorted(v["fields"]) == ["major", "minor", "patch", "suffix"]


def test_docs_are_current():
    """docs/rpc.md's method list is generated from the table (python -m reactor.rpc.docs)."""
    assert rpc_docs.main(["--check"]) == 0, \
        "docs/rpc.md is stale: run `python -m reactor.rpc.docs`"


def test_docs_render_and_splice(tmp_path):
    t = MethodTable(builtins=True)
    text = rpc_docs.render(t)
    assert text.startswith(rpc_docs.BEGIN) and text.rstrip().endswith(rpc_docs.END)
    assert "### rpc_get_methods" in text and "`include_aliases`" in text
    doc = "intro\n" + rpc_docs.BEGIN + "\nold\n" + rpc_docs.END + "\noutro\n"
    out = rpc_docs.splice(doc, text)
    assert out.startswith("intro\n") and out.endswith("\noutro\n") and "old" not in out
    path = tmp_path / "x.md"
    path.write_text("intro\n")
    assert rpc_docs.main(["--check", "--path", str(path)]) == 1


def test_uuid_format_parses_as_spdk_does():
    from reactor.rpc import Param, ParamError
    p = Param("uuid", str, required=False, format="uuid")
    assert p.validate("0B0FA0C2-0000-4000-8000-000000000001") == "0b0fa0c2-0000-4000-8000-000000000001"
    for bad in ("not-a-uuid", "x" * (1 << 20), "{0b0fa0c2-0000-4000-8000-000000000001}",
                "0b0fa0c2000040008000000000000001", "0b0fa0c2-0000-4000-8000-00000000000g",
                "0b0fa0c2-0000-4000-8000-000000000001 "):
        with pytest.raises(ParamError) as ei:
            p.validate(bad)
        assert "must be a UUID" in str(ei.value) and len(str(ei.value)) < 300
    with pytest.raises(TypeError):
        Param("n", int, format="uuid")
