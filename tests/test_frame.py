import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.frame import fit_to_size


def _photo(w, h):
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    arr[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    return Image.fromarray(arr)


def test_crop_keeps_the_centre_and_reports_it():
    img, rec = fit_to_size(_photo(512, 512), 576, 1024, "crop")
    assert img.size == (576, 1024) and img.mode == "RGB"
    assert rec["strategy"] == "crop"
    x0, y0, x1, y1 = rec["crop_box"]
    assert (y0, y1) == (0, 512) and x1 - x0 == 288 and x0 == 112
    assert rec["kept_fraction"] == pytest.approx(288 / 512, abs=1e-3)
    assert rec["upscaled"] is True


def test_pad_keeps_the_whole_photo():
    img, rec = fit_to_size(_photo(600, 400), 576, 1024, "pad")
    assert img.size == (576, 1024)
    assert rec["strategy"] == "pad"
    x0, y0, x1, y1 = rec["placed_box"]
    assert x1 - x0 == 576 and y1 - y0 == 384


def test_auto_pads_wide_photos_and_crops_near_portrait_ones():
    assert fit_to_size(_photo(600, 400), 576, 1024)[1]["strategy"] == "pad"
    assert fit_to_size(_photo(600, 900), 576, 1024)[1]["strategy"] == "crop"


def test_unknown_strategy():
    with pytest.raises(ConfigError, match="crop"):
        fit_to_size(_photo(100, 100), 64, 64, "stretch")
