"""E-model MOS (ITU-T G.107): known points and the right direction of change."""

from __future__ import annotations

import pytest

from voip.media import emodel


def test_default_r_maps_to_mos_441() -> None:
    assert emodel.mos_from_r(93.2) == pytest.approx(4.41, abs=0.005)
    assert emodel.mos_from_r(0) == 1.0 and emodel.mos_from_r(120) == 4.5


def test_loss_impairment_follows_g107_formula() -> None:
    # Ie,eff = 0 + 95 * 5 / (5 + 25.1)
    assert emodel.effective_equipment_impairment(5.0) == pytest.approx(95 * 5 / 30.1)
    assert emodel.effective_equipment_impairment(0.0) == 0.0


def test_delay_impairment_knee_at_177_ms() -> None:
    assert emodel.delay_impairment(100) == pytest.approx(2.4)
    assert emodel.delay_impairment(277.3) == pytest.approx(0.024 * 277.3 + 11.0)


def test_more_delay_or_loss_never_scores_better() -> None:
    base = emodel.mos(5, 0, 60)
    assert emodel.mos(45, 0, 60) < base
    assert emodel.mos(5, 3, 60) < base
    assert emodel.mos(200, 10, 60) < emodel.mos(45, 0, 60)


def test_opus_delay_constant_matches_libopus() -> None:
    from voip.codecs.opus import OpusEncoder

    # 20 ms frames plus the encoder's lookahead, as libopus itself reports it (OPUS_GET_LOOKAHEAD).
    lookahead_ms = OpusEncoder().lookahead_samples / 48
    assert 20 + lookahead_ms == pytest.approx(emodel.OPUS_ALGORITHMIC_DELAY_MS)
