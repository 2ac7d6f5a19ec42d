import pytest
import torch

from nas.builder import build_model, count_macs, count_params
from nas.space import load_space

# mobile-vision model zoo figures at 224x224, 1000 classes
PUBLISHED = {"fbnet_a": (244.5e6, 4.3e6), "fbnet_b": (291.1e6, 4.8e6), "fbnet_c": (378.2e6, 5.5e6)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_builder_reproduces_published_sizes(name):
    space = load_space(name, resolution=224, classes=1000)
    model = build_model(space, space.fixed_arch())
    macs, params = PUBLISHED[name]
    assert count_macs(model, model.input_shape) == pytest.approx(macs, rel=0.01)
    assert count_params(model) == pytest.approx(params, rel=0.01)


def test_model_shapes_follow_resolved_blocks():
    space = load_space("fbnet", resolution=40, width_multiplier=0.25, classes=7, in_channels=1)
    arch = space.fixed_arch()
    blocks = space.resolve(arch)
    assert blocks[-1].resolution == 2  # 40 -> 20 -> 10 -> 5 -> 3 -> 2
    model = build_model(space, arch).eval()
    assert model(torch.randn(2, 1, 40, 40)).shape == (2, 7)


def test_grouped_op_needs_divisible_channels():
    from nas.blocks import make_block
    from nas.errors import ArchError
    with pytest.raises(ArchError, match="not divisible into 2 groups"):
        make_block("ir_k3_e1_g2", 9, 9, 1)
