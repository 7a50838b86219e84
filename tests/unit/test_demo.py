"""The demo's pure parts: its config, the source-map picture, and the sentences for server faults
(the page itself runs in tests/e2e/test_demo_e2e.py)."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from app.demo.backends import explain
from app.demo.config import DemoConfig
from app.demo.media import NO_SOURCE, PALETTE, legend, selection_map


def test_config_refuses_what_cannot_work():
    with pytest.raises(ValueError, match="backend"):
        DemoConfig(backend="grpc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1 to 8"):
        DemoConfig(max_sources=9)


def test_the_map_shows_each_cells_main_source_paler_when_shared():
    maps = np.zeros((1, 3, 2, 2), dtype=np.float32)  # k = 2 sources + the extra tokens
    maps[0, 0, 0, 0] = 1  # all source 1
    maps[0, 1, 0, 1] = 1  # all source 2
    maps[0, 2, 1, 0] = 1  # no source
    maps[0, :, 1, 1] = [0.4, 0.3, 0.3]  # a blend, source 1 ahead
    picture = selection_map(maps, side=4)
    assert picture.shape == (1, 4, 4, 3) and picture.dtype == np.uint8
    np.testing.assert_array_equal(picture[0, 0, 0], PALETTE[0])
    np.testing.assert_array_equal(picture[0, 0, 2], PALETTE[1])
    np.testing.assert_array_equal(picture[0, 2, 0], NO_SOURCE)
    blend = picture[0, 2, 2].astype(int)
    assert (blend > PALETTE[0]).all() and np.argmin(blend) == np.argmin(PALETTE[0])  # paler, same hue


def test_the_legend_puts_each_colour_under_its_photo():
    photos = [np.full((30, 40, 3), v, dtype=np.uint8) for v in (10, 200)]
    strip = legend(photos, side=32)
    assert strip.shape[0] == 32 + 8
    np.testing.assert_array_equal(strip[-1, 0], PALETTE[0])
    np.testing.assert_array_equal(strip[-1, 32 + 4], PALETTE[1])


class _Handle:
    inference_url = "http://127.0.0.1:1"
    key_file = "/srv/ts/key_file.json"


@pytest.mark.parametrize(
    ("status", "message", "needle"),
    [
        (400, "Token Authorization failed: InvalidKeyException", "refused the token from /srv/ts/key_file.json"),
        (0, "no key file at /srv/ts/key_file.json", "TorchServe is not running"),
        (404, "Model version: 9.9 does not exist for model: iwarp", "does not serve version 9.9"),
        (415, "`sources[0]` is not an image", "refused the request (HTTP 415)"),
    ],
)
def test_server_answers_become_one_sentence(status, message, needle):
    from serving.client import ServeError

    assert needle in str(explain(ServeError(status, message), _Handle(), "9.9"))


def test_an_unreachable_server_is_named():
    text = str(explain(requests.ConnectionError("refused"), _Handle()))
    assert "http://127.0.0.1:1 is not answering" in text and "iwarp serve start" in text
