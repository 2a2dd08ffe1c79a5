import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.overlay import BUNDLED_FONT, LABEL_TEXTS, draw_label, label_text
from pipeline.settings import OverlaySettings


def _noise(frames=3, h=144, w=256, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (frames, h, w, 3), dtype=np.uint8)


def test_pixels_change_only_inside_the_returned_box_on_every_frame():
    frames = _noise()
    before = frames.copy()
    record = draw_label(frames, OverlaySettings(position="top-right", font_size=0.1))
    x0, y0, x1, y1 = record["box"]
    assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 144
    changed = np.any(frames != before, axis=-1)  # (F, H, W)
    outside = changed.copy()
    outside[:, y0:y1, x0:x1] = False
    assert not outside.any()
    assert all(changed[i, y0:y1, x0:x1].mean() > 0.5 for i in range(len(frames)))
    assert record["text"] == "AI-generated" and record["font"] == BUNDLED_FONT.name
    assert x1 == 256 - round(0.04 * 256) and y0 == round(0.04 * 256)  # top-right, margin from the edges


def test_every_position_lands_where_it_says():
    spots = {}
    for position in ("top-left", "top-right", "bottom-left", "bottom-right", "top", "bottom"):
        spots[position] = draw_label(_noise(1), OverlaySettings(position=position, font_size=0.08))["box"]
    assert spots["top-left"][0] < spots["top"][0] < spots["top-right"][0]
    assert spots["top"][1] < spots["bottom"][1]
    assert abs((spots["bottom"][0] + spots["bottom"][2]) / 2 - 128) <= 1


def test_text_is_readable_white_on_dark_and_differs_per_language():
    boxes, texts = {}, {}
    for language in ("en", "id"):
        frames = np.full((1, 144, 256, 3), 255, np.uint8)  # white background: the hardest case
        record = draw_label(frames, OverlaySettings(language=language, opacity=1.0, font_size=0.1, position="top"))
        x0, y0, x1, y1 = record["box"]
        patch = frames[0, y0:y1, x0:x1].astype(int)
        assert patch.min() < 120 and patch.max() == 255  # the dark pill and the white text
        boxes[language], texts[language] = record["box"], record["text"]
    assert texts == {"en": "AI-generated", "id": "Dibuat dengan AI"}
    assert boxes["id"][2] - boxes["id"][0] > boxes["en"][2] - boxes["en"][0]


def test_opacity_scales_how_much_the_label_darkens():
    darkening = {}
    for opacity in (0.3, 0.9):
        frames = np.full((1, 144, 256, 3), 200, np.uint8)
        x0, y0, x1, y1 = draw_label(frames, OverlaySettings(opacity=opacity, font_size=0.1))["box"]
        darkening[opacity] = 200 - frames[0, y0:y1, x0:x1].astype(float)
    # the pill's flat middle (left of the text): darkened by opacity x pill alpha
    mid = {o: d[d.shape[0] // 2, 2:6].mean() for o, d in darkening.items()}
    assert mid[0.9] / mid[0.3] == pytest.approx(3.0, rel=0.1)


def test_custom_text_wins_and_unknown_language_is_refused():
    assert label_text(OverlaySettings(language="xx", text="Made with AI")) == "Made with AI"
    assert set(LABEL_TEXTS) >= {"en", "id"}
    with pytest.raises(ConfigError, match="en, es") as caught:
        label_text(OverlaySettings(language="xx"))
    assert caught.value.code == "bad_option"


def test_a_missing_or_broken_font_is_a_config_error(tmp_path):
    not_a_font = tmp_path / "font.ttf"
    not_a_font.write_text("this is not a font")
    for path in (tmp_path / "missing.ttf", not_a_font):
        with pytest.raises(ConfigError, match=str(path)) as caught:
            draw_label(_noise(1), OverlaySettings(font=path))
        assert caught.value.code == "bad_font"


def test_text_too_wide_is_set_smaller_and_text_that_cannot_fit_is_refused():
    record = draw_label(_noise(1, 64, 64), OverlaySettings())
    x0, _, x1, _ = record["box"]
    assert x0 >= 0 and x1 <= 64 and record["font_px"] >= 4
    with pytest.raises(ConfigError) as caught:
        draw_label(_noise(1, 64, 64), OverlaySettings(text="AI-generated " * 10))
    assert caught.value.code == "label_too_big"
