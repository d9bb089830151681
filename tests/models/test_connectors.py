"""Connectors on tiny towers: token shapes, layer selection and pooling from the recipe, errors."""

from __future__ import annotations

import pytest
import torch

from eyeops.errors import ConfigError
from eyeops.models.common.connectors import build_connector, tokens_per_view
from eyeops.models.common.specs import ConnectorSpec, VisionTowerSpec
from eyeops.models.common.towers import build_tower, tower_geometry

SIGLIP = VisionTowerSpec(
    kind="siglip",
    name="tiny",
    image_size=32,
    config={
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    },
)
CNN = VisionTowerSpec(kind="timm", name="efficientnet_lite0", weights="none", image_size=64)


@pytest.fixture(scope="module")
def siglip():
    return build_tower(SIGLIP)


@pytest.fixture(scope="module")
def cnn():
    return build_tower(CNN)


def test_mlp2x_gelu_projects_one_layer(siglip):
    conn = build_connector(ConnectorSpec(type="mlp2x_gelu", select_layer=-2), siglip, out_dim=24)
    assert conn.groups == [[3]]
    out = conn(siglip(torch.randn(2, 3, 32, 32)))
    assert out.shape == (2, 16, 24)  # (32/8)^2 patches
    assert [type(m).__name__ for m in conn.proj] == ["Linear", "GELU", "Linear"]


def test_ldc_fuses_low_high_and_last_layers(siglip):
    spec = ConnectorSpec(type="ldc", low_layers=[1, 2], high_layers=[3], select_layer=-1, grid=2, pool="max")
    conn = build_connector(spec, siglip, out_dim=24)
    assert conn.groups == [[1, 2], [3], [4]] and conn.mean_flags == [True, True, True]
    assert conn.proj[0].in_features == 3 * 32  # fine + coarse + last, channel-concatenated
    maps = siglip(torch.randn(2, 3, 32, 32))
    out = conn(maps)
    assert out.shape == (2, 4, 24)  # compressed to grid 2x2
    # The fine map really is the mean of the low layers: changing layer 1 alone changes the output.
    maps2 = list(maps)
    maps2[1] = maps2[1] + torch.randn_like(maps2[1])  # not a constant shift: LayerNorm removes those
    assert not torch.allclose(conn(maps2), out)
    assert tokens_per_view(spec, tower_geometry(SIGLIP)) == 4


def test_ldc_on_cnn_concatenates_stages_of_different_width(cnn):
    spec = ConnectorSpec(type="ldc", low_layers=[2, 3], high_layers=[5, 6], select_layer=-1)
    conn = build_connector(spec, cnn, out_dim=16)
    channels = cnn.layer_channels()
    assert conn.mean_flags == [False, False, True]
    assert conn.proj[0].in_features == channels[2] + channels[3] + channels[5] + channels[6] + channels[-1]
    out = conn(cnn(torch.randn(1, 3, 64, 64)))
    assert out.shape == (1, cnn.layer_grids()[-1] ** 2, 16)
    assert tokens_per_view(spec, tower_geometry(CNN)) == out.shape[1]


def test_truncation_keeps_only_needed_layers(siglip):
    tower = build_tower(SIGLIP)
    conn = build_connector(ConnectorSpec(type="mlp2x_gelu", select_layer=2), tower, out_dim=8)
    tower.truncate(max(conn.layers) + 1)
    assert tower.num_layers == 3 and len(tower(torch.randn(1, 3, 32, 32))) == 3


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (dict(type="mlp2x_gelu", select_layer=9), "out of range"),
        (dict(type="ldc", low_layers=[3], high_layers=[1]), "must all lie below"),
    ],
)
def test_bad_layers_are_config_errors(siglip, spec, match):
    with pytest.raises(ConfigError, match=match):
        build_connector(ConnectorSpec(**spec), siglip, out_dim=8)


def test_spec_requires_ldc_layers():
    with pytest.raises(ValueError, match="needs low_layers"):
        ConnectorSpec(type="ldc")
    with pytest.raises(ValueError, match="'ldc' only"):
        ConnectorSpec(type="mlp2x_gelu", low_layers=[1])


def test_input_norm_equalises_layer_scales(cnn):
    """Per-layer LayerNorm: rescaling one stage's map leaves the tokens unchanged (not so without it)."""
    spec = ConnectorSpec(type="ldc", low_layers=[2, 3], high_layers=[5, 6], select_layer=-1)
    normed = build_connector(spec, cnn, out_dim=16)
    raw = build_connector(spec.model_copy(update={"input_norm": False}), cnn, out_dim=16)
    assert normed.norms is not None and raw.norms is None
    assert [[n.normalized_shape[0] for n in group] for group in normed.norms] == [
        [cnn.layer_channels()[i] for i in group] for group in normed.groups
    ]
    raw.proj.load_state_dict(normed.proj.state_dict())
    with torch.no_grad():
        maps = cnn(torch.randn(2, 3, 64, 64))
        loud = list(maps)
        loud[2] = loud[2] * 10.0  # one early stage ten times louder, as CNN stages are
        torch.testing.assert_close(normed(loud), normed(maps), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(raw(loud), raw(maps), atol=1e-3)


def test_mlp2x_gelu_normalises_its_input(siglip):
    conn = build_connector(ConnectorSpec(type="mlp2x_gelu"), siglip, out_dim=8)
    assert len(conn.norms) == 1 and conn.norms[0][0].normalized_shape == (32,)
    assert any(name.startswith("norms.") for name, _ in conn.named_parameters())  # trained with the MLP
