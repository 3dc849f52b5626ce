from __future__ import annotations

import pytest
import torch
from torch import nn

from radaudit.models.backbone import create_backbone, feature_dim


def test_resnet18_one_channel_features() -> None:
    backbone = create_backbone("resnet18")
    feats = backbone(torch.zeros(2, 1, 32, 32))
    assert feats.shape == (2, 512)
    assert feature_dim(backbone) == 512


def test_in_chans_three() -> None:
    backbone = create_backbone("resnet18", in_chans=3)
    assert backbone(torch.zeros(2, 3, 32, 32)).shape == (2, 512)


def test_unknown_name_lists_how_to_find_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet_18'.*resnet18.*timm\.list_models"):
        create_backbone("resnet_18")


@pytest.mark.parametrize("kwargs, match", [
    ({"in_chans": 0}, "in_chans"),
    ({"pretrained": True}, "pretrained"),
])
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_backbone("resnet18", **kwargs)


def test_feature_dim_of_plain_module() -> None:
    module = nn.Sequential(nn.Conv2d(1, 7, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert feature_dim(module) == 7
