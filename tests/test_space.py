import json

import numpy as np
import pytest

from nas.arch.space import Arch, arch_document, load_arch, load_space
from nas.arch.spec import builtin_spaces
from nas.errors import ArchError, SpaceError


def test_builtin_spaces_load_and_fbnet_shape():
    assert {"fbnet", "fbnet_v2", "fbnet_a", "fbnet_b", "fbnet_c"} <= set(builtin_spaces())
    space = load_space("fbnet")
    assert len(space.layers) == 22
    assert all(len(layer.candidates) == 9 for layer in space.layers)
    assert [s.channel_options[-1] for s in space.stages] == [16, 24, 32, 64, 112, 184, 352]
    assert [space.layers[s.layers[0]].stride for s in space.stages] == [1, 2, 2, 2, 1, 2, 1]
    assert load_space("fbnet_a").is_fixed and not space.is_fixed


def test_the_fixed_resolution_space_is_fbnet_v2_less_its_resolution_choice():
    fixed = load_space("fbnet_v2_fixed_resolution", resolution=32, width_multiplier=0.25, classes=10)
    full = load_space("fbnet_v2", resolution=32, width_multiplier=0.25, classes=10)
    assert full.searches_resolution and not fixed.searches_resolution
    assert [(layer.candidates, layer.stride) for layer in fixed.layers] == \
        [(layer.candidates, layer.stride) for layer in full.layers]
    assert [s.channel_options for s in fixed.stages] == [s.channel_options for s in full.stages]
    assert {s.resolution for s in (fixed, full)} == {32}
    assert fixed.sample(np.random.default_rng(0)).resolution is None


def test_arch_json_round_trip_and_validation():
    space = load_space("fbnet_v2", resolution=64, width_multiplier=0.5, classes=10)
    rng = np.random.default_rng(3)
    for _ in range(20):
        arch = space.sample(rng)
        assert Arch.from_json(arch.to_json()) == arch
        assert space.validate(arch) is arch
        blocks = space.resolve(arch)
        assert blocks[0].resolution == arch.resolution
        assert [b.c_out for b in blocks[1:-2]][-1] == arch.channels[-1]


def test_arch_file_keeps_space_args(tmp_path):
    space = load_space("fbnet", resolution=32, width_multiplier=0.25, classes=10, in_channels=1)
    arch = space.sample(np.random.default_rng(0))
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(arch_document(space, arch)))
    loaded, args = load_arch(str(path))
    assert loaded == arch
    assert args == {"resolution": 32, "width_multiplier": 0.25, "classes": 10, "in_channels": 1}


def test_mutate_and_crossover_stay_in_space():
    space = load_space("fbnet_v2")
    rng = np.random.default_rng(0)
    a, b = space.sample(rng), space.sample(rng)
    m = space.mutate(a, rng, prob=0.0)
    assert m != a and space.validate(m)
    child = space.crossover(a, b, rng)
    assert all(op in (x, y) for op, x, y in zip(child.ops, a.ops, b.ops))
    assert space.encode(child).shape == space.encode(a).shape


@pytest.mark.parametrize("arch, message", [
    (Arch("fbnet", ("skip",) * 21), "has 21 ops"),
    (Arch("fbnet", ("conv_k3",) * 22), "not a candidate"),
    (Arch("fbnet", ("ir_k4_e2",) * 22), "unknown op"),
    (Arch("fbnet_a", ("skip",) * 22), "is for space 'fbnet_a'"),
])
def test_archs_that_do_not_fit(arch, message):
    with pytest.raises(ArchError, match=message):
        load_space("fbnet").validate(arch)


def test_space_errors_name_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstem: [conv_k3, 16, 2]\nhead: [conv_k1, 64]\nstages:\n  - {channels: 8, repeat: 1, stride: 3}\n"
                   "candidates: [skip]\n")
    with pytest.raises(SpaceError, match=r"bad.yaml: key 'stages.0.stride'"):
        load_space(str(bad))
    bad.write_text("name: x\nstem: [conv_k3, 16\n")
    with pytest.raises(SpaceError, match=r"bad.yaml:\d+: malformed YAML"):
        load_space(str(bad))
    bad.write_text("name: x\nstem: [conv_k3, 16, 2]\nhead: [conv_k1, 64]\nblocks: [[ir_k3_e9_z, 8, 1, 1]]\n")
    with pytest.raises(SpaceError, match="unknown op 'ir_k3_e9_z'"):
        load_space(str(bad))
    with pytest.raises(SpaceError, match="unknown space 'nope'"):
        load_space("nope")
    with pytest.raises(SpaceError, match="resolution must be positive"):
        load_space("fbnet", resolution=-1)


def test_resolution_options_scale_with_resolution():
    space = load_space("fbnet_v2", resolution=112)
    assert space.resolution_options == [80, 96, 112]
