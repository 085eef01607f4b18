import re
import subprocess

import numpy as np
import pytest
from helpers import CNN_CODES, user_env

from pipeline.backbones import REGISTRY, Preprocess, build_base, build_feature_model, get_backbone
from pipeline.errors import UserError


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_backbone_builds_with_its_layers(name):
    bb = REGISTRY[name]
    size = max(bb.min_size, 32) if bb.min_size > 32 else 32
    base = build_base(bb, "none", size)
    names = {l.name for l in base.layers}
    assert bb.default_layer in names and set(bb.suggested_layers) <= names
    assert base.trainable is False
    model, shapes = build_feature_model(bb, [(bb.default_layer, "avg"), (bb.suggested_layers[1], "max")],
                                        "none", size)
    out = model(np.zeros((2, size, size, 3), np.float32))
    assert [o.shape[0] for o in out] == [2, 2] and out[0].shape[1] == shapes[0][-1]


def test_inception_v3_flatten_is_the_classic_51200_code():
    bb = REGISTRY["inception_v3"]
    model, shapes = build_feature_model(bb, [("mixed10", "flatten")], "none")
    assert shapes == [(5, 5, 2048)] and model.outputs[0].shape[1] == 51200


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UserError, match="efficientnet_lite0, efficientnet_lite1"):
        get_backbone("alexnet")
    with pytest.raises(UserError, match="suggested: block5_pool"):
        build_feature_model(REGISTRY["vgg16"], [("nope", "avg")], "none", 32)
    with pytest.raises(UserError, match="too small"):
        build_base(REGISTRY["inception_v3"], "none", 32)


@pytest.mark.slow
def test_imagenet_download_failure_is_one_clear_message(tmp_path):
    """As on a machine without network: an empty Keras cache and a proxy that refuses connections."""
    env = dict(user_env(), KERAS_HOME=str(tmp_path / "keras"), HTTPS_PROXY="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")
    r = subprocess.run([CNN_CODES, "codes", "--backbone", "vgg16", "--image-size", "32", "--cache-dir",
                        str(tmp_path / "cache")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert re.search("could not get ImageNet weights for vgg16.*--weights PATH.*efficientnet_lite0", r.stderr)


def test_preprocessing_modes():
    x = np.full((1, 2, 2, 3), 255.0, np.float32)
    x[..., 0] = 0
    assert np.allclose(np.asarray(Preprocess("tf")(x))[0, 0, 0], [-1, 1, 1])
    assert np.allclose(np.asarray(Preprocess("lite")(x))[0, 0, 0], [-127 / 128, 1, 1])
    assert Preprocess("none") is None
    caffe = np.asarray(Preprocess("caffe")(x))[0, 0, 0]  # BGR order, mean removed
    assert np.allclose(caffe, [255 - 103.939, 255 - 116.779, 0 - 123.68])
