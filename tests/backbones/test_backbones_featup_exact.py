"""FeatUp's six, value for value.

At 224 px against the public fixtures (FeatUp's own code on seeded weights, loaded here
from the original-format files the fixture's weights.py regenerates). At other sizes,
where no fixture exists, against FeatUp's formulas written out below, straight from
DINO's / DINOv2's ``interpolate_pos_encoding``, MaskCLIP's ``interpolate.py`` and the
CLIP fork's ``forward_spatial``, on the same weights.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import napari_featup as nf
from napari_featup.weights import is_torchscript_archive, read_state_dict

TOL = 1e-4  # the fixture README's tolerance; a faithful implementation gets about 1e-6


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def fixture_input(featup_fixture):
    root, cases, _ = featup_fixture
    return torch.from_numpy(np.load(root / cases["cases"][0]["input"]["file"])["x"]).float()


def _case(cases, name):
    return next(c for c in cases["cases"] if c["backbone"] == name)


@pytest.mark.parametrize(
    "name",
    [
        "dino16",
        "dinov2",
        pytest.param("clip", marks=pytest.mark.slow),  # regenerating ViT-B-16.pt: ~10-20 s
        pytest.param("maskclip", marks=pytest.mark.slow),
    ],
)
def test_public_fixture_matches_featup(name, featup_fixture, featup_weights, fixture_input):
    root, cases, _ = featup_fixture
    case = _case(cases, name)
    expected = torch.from_numpy(np.load(root / case["expected"])["expected"])
    bb = nf.load_backbone(name, weights=featup_weights(name), device="cpu", cache=False)
    with torch.no_grad():
        y = bb(fixture_input)
    assert tuple(y.shape) == tuple(case["output_shape"]) == tuple(expected.shape)
    assert rel(y, expected) <= min(TOL, cases["tolerance"]["rel_err"])


def test_fixture_tells_timm_defaults_apart(featup_fixture, featup_weights, fixture_input):
    """timm's own resize (antialiased, no offset) misses the DINOv2 fixture by far."""
    root, cases, _ = featup_fixture
    expected = torch.from_numpy(np.load(root / _case(cases, "dinov2")["expected"])["expected"])
    bb = nf.load_backbone("dinov2", weights=featup_weights("dinov2"), device="cpu", cache=False)
    with torch.no_grad():
        tokens = bb.model.forward_features(fixture_input)[:, 1:]
    assert rel(tokens.transpose(1, 2).reshape(expected.shape), expected) > 1e-2


def test_openai_file_is_torchscript_read_without_unpickling(featup_weights):
    path = featup_weights("clip")
    assert is_torchscript_archive(path)
    state = read_state_dict(path)
    assert "visual.proj" in state and "token_embedding.weight" in state  # the whole CLIP
    assert state["visual.proj"].dtype == torch.float16  # as OpenAI ships it
    with pytest.raises(nf.BackboneError, match="does not fit|does not hold"):
        nf.load_backbone("dino16", weights=path, cache=False)


# ------------------------------------------------------------- FeatUp's formulas, written out


def _dino_pos(pos, h0, w0, hw_equal):
    """DINO's / DINOv2 hub's interpolate_pos_encoding (their ``w`` is the height)."""
    n = pos.shape[1] - 1
    if h0 * w0 == n and hw_equal:
        return pos
    m = int(math.sqrt(n))
    patch = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(
        patch.float(),
        scale_factor=((h0 + 0.1) / m, (w0 + 0.1) / m),
        mode="bicubic",
        antialias=False,
    )
    return torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], 1)


def _clip_pos_correct(pos, h0, w0):
    """The CLIP fork's bilinear align_corners resample, with rows along the height."""
    m = int(math.sqrt(pos.shape[1] - 1))
    patch = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(h0, w0), mode="bilinear", align_corners=True)
    return torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], 1)


def _clip_pos_fork(pos, h0, w0):
    """The CLIP fork's code as written (meshgrid, permute, grid_sample, reshape)."""
    width = pos.shape[-1]
    m = int(math.sqrt(pos.shape[1] - 1))
    pe = pos[0, 1:].reshape(1, m, m, width).permute(0, 3, 1, 2)
    xx, yy = torch.meshgrid(torch.linspace(-1, 1, h0), torch.linspace(-1, 1, w0), indexing="ij")
    coords = torch.cat([xx.unsqueeze(-1), yy.unsqueeze(-1)], dim=-1).unsqueeze(0)
    sampled = F.grid_sample(
        pe, coords.permute(0, 2, 1, 3), padding_mode="border", align_corners=True
    ).reshape(width, h0 * w0)
    return torch.cat([pos[0, :1], sampled.permute(1, 0)], dim=0).unsqueeze(0)


def _reference(model, x, patch, pos_fn, value_path=False, project=False):
    """Patch conv, class token, position table, blocks (MaskCLIP: value path last),
    final norm (ln_post), CLIP's projection; patch tokens as (B, C, h0, w0)."""
    b, _, hh, ww = x.shape
    h0, w0 = hh // patch, ww // patch
    tok = F.conv2d(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=patch)
    tok = torch.cat([model.cls_token.expand(b, -1, -1), tok.flatten(2).transpose(1, 2)], 1)
    tok = model.norm_pre(tok + pos_fn(model.pos_embed, h0, w0, hh == ww))
    blocks = list(model.blocks)
    for blk in blocks[:-1] if value_path else blocks:
        tok = blk(tok)
    if value_path:
        last = blocks[-1]
        d = tok.shape[-1]
        wv, bv = last.attn.qkv.weight[2 * d :], last.attn.qkv.bias[2 * d :]
        tok = last.attn.proj(F.linear(last.norm1(tok), wv, bv))
    tok = model.norm(tok)
    if project:
        tok = model.head(tok)
    return tok[:, 1:].transpose(1, 2).reshape(b, -1, h0, w0)


def _input(h, w, seed=5):
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "name, size",
    [
        ("dino16", (448, 448)),
        ("dino16", (224, 320)),
        ("dino16", (160, 160)),
        ("dino16", (224, 240)),  # odd grid width: FeatUp accepts it
        ("dinov2", (448, 448)),
        ("dinov2", (224, 322)),
        ("dinov2", (518, 518)),  # the native grid: the table is used as is
    ],
)
def test_dino_family_resize_is_featups_formula(name, size, featup_weights):
    bb = nf.load_backbone(name, weights=featup_weights(name), device="cpu")
    x = _input(*size)
    with torch.no_grad():
        ours = bb(x)
        ref = _reference(bb.model, x, bb.patch_size, _dino_pos)
    assert ours.shape == ref.shape
    assert rel(ours, ref) < 1e-5


def test_vit_uses_dinos_resize():
    """FeatUp's ``vit`` is timm's AugReg weights in DINO's ViT class: DINO's resize."""
    bb = nf.load_backbone("vit", weights="random", device="cpu")
    x = _input(224, 320)
    with torch.no_grad():
        assert rel(bb(x), _reference(bb.model, x, 16, _dino_pos)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("size", [(288, 288), (160, 160), (224, 320)])  # ViT-B: kept small
def test_clip_resize_is_the_forks_done_right(size, featup_weights):
    bb = nf.load_backbone("clip", weights=featup_weights("clip"), device="cpu")
    x = _input(*size)
    with torch.no_grad():
        ours = bb(x)
        ref = _reference(
            bb.model, x, 16, lambda p, h, w, _: _clip_pos_correct(p, h, w), project=True
        )
        fork = _reference(bb.model, x, 16, lambda p, h, w, _: _clip_pos_fork(p, h, w), project=True)
    assert rel(ours, ref) < 1e-5
    if size[0] == size[1]:  # square: exactly the fork's code
        assert rel(ours, fork) < 1e-5
    else:  # non-square: the fork puts positions on the wrong patches; we do not
        assert rel(ours, fork) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("size", [(288, 288), (224, 320)])
def test_maskclip_resize_is_featups_formula(size, featup_weights):
    bb = nf.load_backbone("maskclip", weights=featup_weights("maskclip"), device="cpu")
    x = _input(*size)
    with torch.no_grad():
        ref = _reference(bb.model, x, 16, _dino_pos, value_path=True, project=True)
        assert rel(bb(x), ref) < 1e-5


def _torchvision_layer4(net, x):
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


@pytest.mark.parametrize("size", [(224, 224), (200, 232)])
def test_resnet50_loads_torchvision_weights_and_runs_unpadded(size, tmp_path):
    """FeatUp's resnet50 is torchvision's at any size (it accepts all): no padding."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(3)
    net = torchvision.models.resnet50().eval()
    path = tmp_path / "resnet50-19c8e357.pth"
    torch.save(net.state_dict(), path)
    bb = nf.load_backbone("resnet50", weights=path, device="cpu", cache=False)
    x = _input(*size)
    with torch.no_grad():
        ours, ref = bb(x), _torchvision_layer4(net, x)
    assert ours.shape == ref.shape == (1, 2048, -(-size[0] // 32), -(-size[1] // 32))
    assert rel(ours, ref) < 1e-5
