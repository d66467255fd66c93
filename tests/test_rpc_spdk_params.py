"""SPDK's schema is the source of truth for parameters: every parameter today's SPDK decodes
for a method ringstack implements is declared in ringstack's table, with a compatible type,
range and required-ness; ringstack's own extras are listed here, the rest stay refused.

tests/spdk_schema_params.json holds the facts (name, decoder type, required, enum values) read
from spdk/spdk schema/schema.yaml at the commit it names."""
import json
import os

import pytest

from reactor.rpc import ANY, I32_MAX, I32_MIN, METHODS, U8, U32, U64, Param, ParamError, Schema, discover
from reactor.rpc.schema import MISSING

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "spdk_schema_params.json")) as f:
    SPDK = json.load(f)["methods"]

#: Parameters ringstack has that today's SPDK does not (each documented in docs/rpc.md).
EXTRAS = {
    ("bdev_aio_create", "o_direct"),          # ringstack: open with O_DIRECT
    ("bdev_get_iostat", "name"),              # older SPDK's single-bdev form of names
    ("bdev_set_options", "small_buf_pool_size"),   # ringstack's pool sizes
    ("bdev_set_options", "large_buf_pool_size"),
}
#: Enum values SPDK knows that ringstack refuses (-32602 naming the parameter).
REFUSED_VALUES = {
    ("bdev_raid_create", "raid_level"): {"raid5f", "5f"},
    ("bdev_error_inject_error", "error_type"): {"nvme_failure"},
}
#: SPDK requires these; ringstack has a default (more lenient, never stricter).
LENIENT = {("bdev_raid_get_bdevs", "category"),
           ("iscsi_create_target_node", "alias_name")}   # SPDK's own save_config omits an empty one

_RANGES = {"uint8": (0, U8), "uint16": (0, (1 << 16) - 1), "uint32": (0, U32),
           "uint64": (0, U64), "int32": (I32_MIN, I32_MAX), "int64": (-(1 << 63), (1 << 63) - 1)}
_TYPES = {"string": str, "uuid": str, "boolean": bool, "array": list, "object": dict,
          "enum": str, "number": float}


@pytest.fixture(scope="module")
def table():
    discover()
    return {m.name: m for m in METHODS}


def test_every_method_spdk_has_is_in_the_table(table):
    missing = [m for m in SPDK if m not in table]
    assert missing == []


@pytest.mark.parametrize("method", sorted(SPDK))
def test_every_spdk_parameter_is_declared_compatibly(table, method):
    schema = table[method].schema
    assert schema is not None, f"{method} is RAW"
    for name, spdk in SPDK[method].items():
        p = schema.get(name)
        assert p is not None, f"{method}: SPDK's parameter '{name}' is not declared"
        where = f"{method}.{name}"
        if spdk["type"] in _RANGES:
            lo, hi = _RANGES[spdk["type"]]
            assert p.type is int, where
            assert p.min is not None and p.min >= lo, f"{where}: min {p.min} below {lo}"
            assert p.max is not None and p.max <= hi, f"{where}: max {p.max} above {hi}"
        else:
            assert p.type in (_TYPES[spdk["type"]], ANY), where
        if spdk["type"] == "enum" and p.choices is not None:
            refused = REFUSED_VALUES.get((method, name), set())
            assert set(spdk["values"]) - refused <= set(p.choices), where
        if p.required:
            assert spdk["required"], f"{where}: SPDK's CLI may leave it out, ringstack requires it"
        elif spdk["required"]:
            assert (method, name) in LENIENT, f"{where}: SPDK requires it"
    extras = {(method, p.name) for p in schema if p.name not in SPDK[method]}
    assert extras <= EXTRAS, f"parameters SPDK does not know: {sorted(extras - EXTRAS)}"


@pytest.mark.parametrize("method", sorted(SPDK))
def test_fixed_parameters_accept_their_default_and_nothing_else(table, method):
    schema = table[method].schema
    for p in schema:
        if not p.fixed:
            continue
        if p.default is not MISSING:
            assert p.validate(p.default) == p.default
        other = {int: 1 if p.default != 1 else 2, bool: not p.default if p.default is not MISSING else True,
                 str: "x"}[p.type]
        with pytest.raises(ParamError, match=f"'{p.name}'"):
            p.validate(other)


def test_fixed_param_rule():
    s = Schema(Param("md_size", int, default=0, fixed="no metadata"),
               Param("opc", str, required=False, fixed="all types"))
    assert s.validate({}) == {"md_size": 0, "opc": None}
    assert s.validate({"md_size": 0})["md_size"] == 0
    with pytest.raises(ParamError) as ei:
        s.validate({"md_size": 8})
    assert ei.value.param == "md_size"
    assert str(ei.value) == ("parameter 'md_size' is accepted only at its default 0 in ringstack "
                             "(no metadata), got 8")
    with pytest.raises(ParamError, match="parameter 'opc' can only be left out in ringstack"):
        s.validate({"opc": "read"})
    assert "default only (no metadata)" in s.get("md_size").describe_constraints()
    with pytest.raises(TypeError):
        Param("x", int, fixed="why")           # a fixed parameter must be optional
