"""The backbone registry: its entries' weight files and timm's names for the installed ones."""
import pytest

from common.backbones import BACKBONES
from common.features import load_backbone


def test_weight_file_names_match_torchvision_urls():
    for name, spec in BACKBONES.items():
        if spec.tv_weights is not None:
            assert spec.tv_weights.url.endswith("/" + spec.weight_file), name


@pytest.mark.parametrize("model", ["tf_efficientnet_lite0", "tf_efficientnet_lite0.in1k"])
def test_timm_names_of_the_installed_efficientnet_lites_load_the_package_weights(offline, model):
    backbone = load_backbone(f"timm:{model}")
    assert backbone.weights_source.endswith(BACKBONES["efficientnet_lite0"].weight_file)
    assert backbone.weights_fingerprint() == load_backbone("efficientnet_lite0").weights_fingerprint()
