"""The code comparisons the other tests rely on: test weights give codes of order 1, and the
comparison rejects corrupted codes."""
import h5py
import numpy as np
import pytest
from helpers import FAST, assert_codes_close

from pipeline.codes import generate_codes


@pytest.fixture(scope="module")
def codes(tmp_path_factory):
    from helpers import make_images
    data = make_images(tmp_path_factory.mktemp("cmp") / "data", n_classes=3, per_class=6)
    path = generate_codes(data, cache_dir=tmp_path_factory.mktemp("cache"), **FAST)[0]
    with h5py.File(path) as f:
        return f["codes"][()]


def test_random_test_weights_give_codes_of_order_one(codes):
    assert codes.shape == (18, 1280)
    assert np.abs(codes).max() >= 0.01 and (codes != 0).mean() > 0.2
    assert codes.std(0).mean() > 0.01  # and they differ from image to image


def test_the_comparison_accepts_equal_codes_and_rejects_corrupted_ones(codes):
    assert_codes_close(codes, codes.copy(), rtol=0)
    assert_codes_close(codes * (1 + 1e-7), codes, rtol=1e-5)  # rounding-sized differences pass
    with pytest.raises(AssertionError, match="differ"):
        assert_codes_close(np.zeros_like(codes), codes)  # all zeros
    with pytest.raises(AssertionError, match="differ"):
        assert_codes_close(codes[::-1], codes)  # rows in reverse order
    changed = codes.copy()
    changed[5] += 1e-3 * np.abs(codes).max()
    with pytest.raises(AssertionError, match="differ"):
        assert_codes_close(changed, codes)  # one row off by 0.1% of the scale
    with pytest.raises(AssertionError, match="too small"):
        assert_codes_close(codes * 1e-12, codes * 1e-12)  # vanishing codes compare nothing
    bad = codes.copy()
    bad[0, 0] = np.nan
    with pytest.raises(AssertionError, match="not finite"):
        assert_codes_close(bad, codes)
