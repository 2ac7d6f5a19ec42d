"""Published architectures written in plain torch from their papers' tables, independent of hwnas's spaces (for
``bench_predict_onnx.py``: ``hwnas latency predict model.onnx`` on models hwnas never built).

Each builder returns an ``nn.Module`` for 3 x 224 x 224 images and 1000 classes, as in its paper:

- ``resnet18`` / ``resnet50``: He et al. 2016, Table 1 (basic blocks [2, 2, 2, 2]; bottlenecks [3, 4, 6, 3]).
- ``mobilenet_v2``: Sandler et al. 2018, Table 2 (t, c, n, s rows; ReLU6; 1280-channel head).
- ``mobilenet_v3_large``: Howard et al. 2019, Table 1 (5x5 depthwise, squeeze-and-excite, hard-swish).
- ``squeezenet``: Iandola et al. 2016, v1.1 (Fire modules: squeeze, then 1x1 and 3x3 expands concatenated).
- ``shufflenet_v2``: Ma et al. 2018, Table 5, 1.0x (channel split, concat, channel shuffle).
- ``googlenet``: Szegedy et al. 2015, Table 1 (Inception modules of four branches; local response norm).
- ``vgg11_half``: Simonyan & Zisserman 2015, configuration A at half width, with its three fully connected layers
  (1024 wide instead of 4096: the paper's head alone is 120M parameters, 0.5 GB, too much for a shared 2-core VM).
- ``vit_tiny``: Dosovitskiy et al. 2021 with DeiT-Ti's size (Touvron et al. 2021): 16 px patches, 192 wide,
  12 layers of 3 heads, LayerNorm, GELU, class token.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def conv_bn(c_in, c_out, k, s=1, groups=1, act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


# ---- ResNet -------------------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in, c, s):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c_in, c, 3, s), conv_bn(c, c, 3, act=None))
        self.down = conv_bn(c_in, c, 1, s, act=None) if s != 1 or c_in != c else nn.Identity()

    def forward(self, x):
        return F.relu(self.body(x) + self.down(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in, c, s):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c_in, c, 1), conv_bn(c, c, 3, s), conv_bn(c, 4 * c, 1, act=None))
        self.down = conv_bn(c_in, 4 * c, 1, s, act=None) if s != 1 or c_in != 4 * c else nn.Identity()

    def forward(self, x):
        return F.relu(self.body(x) + self.down(x))


class ResNet(nn.Module):
    def __init__(self, block, repeats, classes=1000):
        super().__init__()
        layers = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
        c_in = 64
        for i, (c, n) in enumerate(zip((64, 128, 256, 512), repeats)):
            for j in range(n):
                layers.append(block(c_in, c, 2 if j == 0 and i > 0 else 1))
                c_in = c * block.expansion
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def resnet18():
    return ResNet(BasicBlock, (2, 2, 2, 2))


def resnet50():
    return ResNet(Bottleneck, (3, 4, 6, 3))


# ---- MobileNetV2 / V3 ---------------------------------------------------------------------------------------------
class SqueezeExcite(nn.Module):
    def __init__(self, c, reduced):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, reduced, 1), nn.Conv2d(reduced, c, 1)

    def forward(self, x):
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class InvertedResidual(nn.Module):
    def __init__(self, c_in, mid, c_out, k, s, act, se=False):
        super().__init__()
        layers = [conv_bn(c_in, mid, 1, act=act)] if mid != c_in else []
        layers.append(conv_bn(mid, mid, k, s, groups=mid, act=act))
        if se:
            layers.append(SqueezeExcite(mid, max(8, (mid // 4 + 4) // 8 * 8)))
        layers.append(conv_bn(mid, c_out, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = s == 1 and c_in == c_out

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v2(classes=1000):
    rows = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    layers, c_in = [conv_bn(3, 32, 3, 2, act=nn.ReLU6)], 32
    for t, c, n, s in rows:
        for i in range(n):
            layers.append(InvertedResidual(c_in, c_in * t, c, 3, s if i == 0 else 1, nn.ReLU6))
            c_in = c
    layers.append(conv_bn(c_in, 1280, 1, act=nn.ReLU6))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, classes))


def mobilenet_v3_large(classes=1000):
    hs, re = nn.Hardswish, nn.ReLU
    rows = [(3, 16, 16, False, re, 1), (3, 64, 24, False, re, 2), (3, 72, 24, False, re, 1), (5, 72, 40, True, re, 2),
            (5, 120, 40, True, re, 1), (5, 120, 40, True, re, 1), (3, 240, 80, False, hs, 2),
            (3, 200, 80, False, hs, 1), (3, 184, 80, False, hs, 1), (3, 184, 80, False, hs, 1),
            (3, 480, 112, True, hs, 1), (3, 672, 112, True, hs, 1), (5, 672, 160, True, hs, 2),
            (5, 960, 160, True, hs, 1), (5, 960, 160, True, hs, 1)]
    layers, c_in = [conv_bn(3, 16, 3, 2, act=hs)], 16
    for k, mid, c, se, act, s in rows:
        layers.append(InvertedResidual(c_in, mid, c, k, s, act, se))
        c_in = c
    layers += [conv_bn(c_in, 960, 1, act=hs), nn.AdaptiveAvgPool2d(1), nn.Conv2d(960, 1280, 1), hs(), nn.Flatten(),
               nn.Dropout(0.2), nn.Linear(1280, classes)]
    return nn.Sequential(*layers)


# ---- SqueezeNet ---------------------------------------------------------------------------------------------------
class Fire(nn.Module):
    def __init__(self, c_in, squeeze, expand):
        super().__init__()
        self.squeeze = nn.Conv2d(c_in, squeeze, 1)
        self.e1, self.e3 = nn.Conv2d(squeeze, expand, 1), nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.e1(x)), F.relu(self.e3(x))], 1)


def squeezenet(classes=1000):
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
    return nn.Sequential(nn.Conv2d(3, 64, 3, 2), nn.ReLU(), pool(), Fire(64, 16, 64), Fire(128, 16, 64), pool(),
                         Fire(128, 32, 128), Fire(256, 32, 128), pool(), Fire(256, 48, 192), Fire(384, 48, 192),
                         Fire(384, 64, 256), Fire(512, 64, 256), nn.Dropout(0.5), nn.Conv2d(512, classes, 1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


# ---- ShuffleNetV2 -------------------------------------------------------------------------------------------------
def channel_shuffle(x, groups=2):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, c_in, c_out, s):
        super().__init__()
        half = c_out // 2
        self.s = s
        if s == 2:
            self.left = nn.Sequential(conv_bn(c_in, c_in, 3, 2, groups=c_in, act=None), conv_bn(c_in, half, 1))
        self.right = nn.Sequential(conv_bn(c_in if s == 2 else half, half, 1), conv_bn(half, half, 3, s, groups=half,
                                                                                       act=None), conv_bn(half, half, 1))

    def forward(self, x):
        if self.s == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.right(b)], 1)
        else:
            out = torch.cat([self.left(x), self.right(x)], 1)
        return channel_shuffle(out)


def shufflenet_v2(classes=1000):
    layers, c_in = [conv_bn(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)], 24
    for c, n in ((116, 4), (232, 8), (464, 4)):
        for i in range(n):
            layers.append(ShuffleUnit(c_in, c, 2 if i == 0 else 1))
            c_in = c
    layers += [conv_bn(c_in, 1024, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, classes)]
    return nn.Sequential(*layers)


# ---- GoogLeNet (Inception v1) ---------------------------------------------------------------------------------------
class Inception(nn.Module):
    def __init__(self, c_in, c1, c3r, c3, c5r, c5, pool):
        super().__init__()
        relu_conv = lambda a, b, k: nn.Sequential(nn.Conv2d(a, b, k, padding=k // 2), nn.ReLU())  # noqa: E731
        self.b1 = relu_conv(c_in, c1, 1)
        self.b3 = nn.Sequential(relu_conv(c_in, c3r, 1), relu_conv(c3r, c3, 3))
        self.b5 = nn.Sequential(relu_conv(c_in, c5r, 1), relu_conv(c5r, c5, 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), relu_conv(c_in, pool, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


def googlenet(classes=1000):
    pool = lambda: nn.MaxPool2d(3, 2, 1)  # noqa: E731
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3), nn.ReLU(), pool(), nn.LocalResponseNorm(5),
        nn.Conv2d(64, 64, 1), nn.ReLU(), nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(), nn.LocalResponseNorm(5), pool(),
        Inception(192, 64, 96, 128, 16, 32, 32), Inception(256, 128, 128, 192, 32, 96, 64), pool(),
        Inception(480, 192, 96, 208, 16, 48, 64), Inception(512, 160, 112, 224, 24, 64, 64),
        Inception(512, 128, 128, 256, 24, 64, 64), Inception(512, 112, 144, 288, 32, 64, 64),
        Inception(528, 256, 160, 320, 32, 128, 128), pool(),
        Inception(832, 256, 160, 320, 32, 128, 128), Inception(832, 384, 192, 384, 48, 128, 128),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.4), nn.Linear(1024, classes))


# ---- VGG ----------------------------------------------------------------------------------------------------------
def vgg11_half(classes=1000):
    layers, c_in = [], 3
    for v in (32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256, 256, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU()]
            c_in = v
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(256 * 7 * 7, 1024), nn.ReLU(), nn.Dropout(),
                         nn.Linear(1024, 1024), nn.ReLU(), nn.Dropout(), nn.Linear(1024, classes))


# ---- ViT ----------------------------------------------------------------------------------------------------------
class EncoderBlock(nn.Module):
    def __init__(self, dim, heads, mlp):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(n, t, d))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    def __init__(self, dim=192, depth=12, heads=3, mlp=768, patch=16, image=224, classes=1000):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


def vit_tiny():
    return ViT()


ARCHITECTURES = {"resnet18": resnet18, "resnet50": resnet50, "mobilenet_v2": mobilenet_v2,
                 "mobilenet_v3_large": mobilenet_v3_large, "squeezenet": squeezenet, "shufflenet_v2": shufflenet_v2,
                 "googlenet": googlenet, "vgg11_half": vgg11_half, "vit_tiny": vit_tiny}


def export(name: str, path, resolution: int = 224, seed: int = 0):
    """Build ``name`` (seeded weights, eval mode, batch norm statistics randomised so nothing folds to zero) and
    export it to ONNX at ``resolution`` (dynamic batch); returns the path."""
    from nas.models.onnx_io import export_onnx

    torch.manual_seed(seed)
    model = ARCHITECTURES[name]().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return export_onnx(model, (3, resolution, resolution), path)
