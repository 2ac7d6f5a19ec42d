"""The op registry: one registration gives an op its builder, profiling shapes, key features and latency family."""

import math

import pytest
import torch
from torch import nn

from nas.arch.opkey import OpKey
from nas.arch.ops import known_ops, parse_op, register_op, unregister_op
from nas.arch.space import load_space
from nas.arch.spec import builtin_spaces
from nas.errors import ArchError, SearchError
from nas.latency.correction import key_family
from nas.latency.features import FEATURE_NAMES, key_features
from nas.latency.profile import block_item, key_is_identity, space_layer_keys
from nas.models.blocks import ConvBNReLU, make_block
from nas.search.capacity.latency import space_keys
from nas.search.capacity.space import load_capacity_space
from nas.search.dnas.masked_blocks import LayerShape, SuperLayer


def _dw_cost(spec, key):
    ro = math.ceil(key.resolution / key.stride)
    macs = spec.kernel ** 2 * key.c_in * ro * ro
    return {"macs": macs, "dw_macs": macs, "params": spec.kernel ** 2 * key.c_in + key.c_out,
            "traffic": 4 * (key.c_in * key.resolution ** 2 + key.c_out * ro * ro)}


@pytest.fixture
def dw_op():
    """A new op, ``dw_k{K}`` (a depthwise KxK conv + BN + ReLU), added with one registration."""
    register_op("dw_k{K}", family="conv", cost=_dw_cost,
                build=lambda spec, key, **options: ConvBNReLU(key.c_in, key.c_out, spec.kernel, key.stride,
                                                              groups=key.c_in))
    yield "dw_k{K}"
    unregister_op("dw_k{K}")


def test_a_registered_op_builds_gets_features_a_family_and_profiling_shapes(dw_op):
    assert dw_op in known_ops()
    spec = parse_op("dw_k5")
    assert (spec.kind, spec.kernel) == ("dw", 5)
    block = make_block("dw_k5", 16, 16, 2)
    assert block(torch.zeros(1, 16, 8, 8)).shape == (1, 16, 4, 4)
    key = OpKey("dw_k5", 16, 16, 2, 8)
    item = block_item(key)
    assert item.input_shapes == ((1, 16, 8, 8),)
    assert item.build()(torch.zeros(*item.input_shapes[0])).shape == (1, 16, 4, 4)
    features = dict(zip(FEATURE_NAMES, key_features(key)))
    assert features["log_macs"] == pytest.approx(math.log1p(25 * 16 * 16))
    assert features["kernel"] == 5 and features["kind_other"] == 1.0
    assert key_family(key) == "conv" and not key_is_identity(key)
    with pytest.raises(SearchError, match="'dw_k5' has no masked variant"):
        SuperLayer(["ir_k3_e1", "dw_k5"], LayerShape([16], [16], True, 1, 0, 0))


def test_registration_rejects_a_taken_pattern_and_an_unknown_family():
    with pytest.raises(ValueError, match="already registered"):
        register_op("skip", family="conv", build=lambda spec, key, **options: nn.Identity())
    with pytest.raises(ValueError, match="latency family must be one of conv, token"):
        register_op("gpu_only", family="gpu", build=lambda spec, key, **options: nn.Identity())
    assert "gpu_only" not in known_ops()
    with pytest.raises(ValueError, match="build must be a callable or 'package.module:function'"):
        register_op("dotted", family="conv", build="nas.models.blocks.build_conv")
    assert "dotted" not in known_ops()


def test_a_builder_given_by_reference_is_imported_on_the_first_build():
    register_op("ref_k{K}", family="conv", build="nas.models.blocks:build_conv")
    try:
        block = make_block("ref_k3", 8, 16, stride=2)
        assert isinstance(block, ConvBNReLU) and block(torch.zeros(1, 8, 8, 8)).shape == (1, 16, 4, 4)
    finally:
        unregister_op("ref_k{K}")


def test_an_unknown_op_lists_the_known_ones():
    with pytest.raises(ArchError, match=r"unknown op 'nope_k3' \(known: ") as info:
        parse_op("nope_k3")
    assert all(pattern in str(info.value) for pattern in known_ops())
    assert {"conv_k{K}", "ir_k{K}_e{E}[_g{G}]", "skip", "pool_fc", "vit_attn", "quant_transition"} <= set(known_ops())
    with pytest.raises(ArchError, match="unknown op 'ir_k4_e2': kernel must be odd"):
        parse_op("ir_k4_e2")


@pytest.mark.parametrize("name", sorted(builtin_spaces()))
def test_every_op_of_the_builtin_spaces_resolves(name):
    if builtin_spaces()[name] == "vit_capacity":
        space = load_capacity_space(name, in_channels=1, classes=10)
        keys, family = space_keys(space), "token"
    else:
        keys, family = space_layer_keys(load_space(name, resolution=32, width_multiplier=0.25, classes=10)), "conv"
    assert keys
    for key in keys:
        assert key_family(key) == family
        assert len(key_features(key)) == len(FEATURE_NAMES)
        assert block_item(key).input_shapes
    for op in sorted({k.op for k in keys}):  # one module per op, built at the first key of it
        key = next(k for k in keys if k.op == op)
        assert isinstance(block_item(key).build(), nn.Module)


def test_a_key_of_an_unregistered_op_is_an_error_not_the_token_family():
    key = OpKey("attn", 64, 64, tokens=16)
    for ask in (key_family, key_features, key_is_identity, block_item):
        with pytest.raises(ArchError, match="unknown op 'attn'"):
            ask(key)
