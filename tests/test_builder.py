import pytest
import torch

from nas.arch.space import load_space
from nas.models.builder import build_model, count_macs, count_params

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
    from nas.errors import ArchError
    from nas.models.blocks import make_block
    with pytest.raises(ArchError, match="not divisible into 2 groups"):
        make_block("ir_k3_e1_g2", 9, 9, 1)


def test_residual_blocks_start_as_the_identity():
    """Zero-gamma: a fresh residual block's last batch norm scale is zero, so the block passes its input through
    (in training mode too); a block without a residual is not silenced."""
    from nas.arch.space import parse_op
    from nas.models.blocks import InvertedResidual

    x = torch.randn(4, 16, 8, 8)
    for op in ("ir_k3_e1", "ir_k5_e6", "ir_k3_e1_g2"):
        block = InvertedResidual(parse_op(op), 16, 16, 1).train()
        assert block.residual and torch.equal(block(x), x), op
    strided = InvertedResidual(parse_op("ir_k3_e6"), 16, 24, 2).train()
    assert not strided.residual and strided(x).abs().sum() > 0
    assert all(m.bias is None for m in strided.modules() if isinstance(m, torch.nn.Conv2d))  # batch norm follows


def test_a_fresh_space_model_trains_its_residual_scales():
    """The zero scales are where training starts, not a frozen state: one step moves them."""
    space = load_space("fbnet", resolution=16, width_multiplier=0.25, classes=3, in_channels=1)
    model = build_model(space, space.fixed_arch()).train()
    scales = [m.pwl[1].weight for m in model.modules() if getattr(m, "residual", False)]
    assert scales and all(torch.equal(s, torch.zeros_like(s)) for s in scales)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(model(torch.randn(8, 1, 16, 16)), torch.randint(0, 3, (8,))).backward()
    opt.step()
    assert any(s.abs().sum() > 0 for s in scales)
