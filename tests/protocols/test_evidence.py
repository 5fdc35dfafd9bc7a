"""Evidence channels: quote verification by normalised exact match, pixel reads against the source."""

import numpy as np
import pytest

from oversight import protocols as P

PASSAGE = (
    "The lighthouse keeper, Mara Quell, logged 14 storms in 1893. "
    "Her “storm book” was kept in the north tower; it burned in 1901."
)


def test_verbatim_quote_is_verified_despite_case_whitespace_and_punctuation():
    assert P.verify_quote("logged 14 storms in 1893", PASSAGE)
    assert P.verify_quote("  LOGGED   14\nstorms in 1893!! ", PASSAGE)
    assert P.verify_quote('Her "storm book" was kept', PASSAGE)  # straight vs curly quotes
    assert P.verify_quote("north tower it burned", PASSAGE)  # ';' dropped
    assert P.verify_quote("Mara Quell logged", PASSAGE)  # ',' dropped


def test_paraphrase_or_altered_quote_is_unverified():
    assert not P.verify_quote("Mara Quell recorded 14 storms in 1893", PASSAGE)  # paraphrase
    assert not P.verify_quote("logged 15 storms in 1893", PASSAGE)  # one number changed
    assert not P.verify_quote("storms in 1893 logged 14", PASSAGE)  # reordered
    assert not P.verify_quote("ark", PASSAGE)  # inside "Mara": whole words only
    assert not P.verify_quote(" ... ", PASSAGE)  # nothing left after normalising


def test_normalise_rejects_non_text():
    with pytest.raises(TypeError, match="normalise expects a string"):
        P.normalise(14)


def test_pixel_channel_reads_true_values_and_rejects_bad_requests():
    image = np.array([[0.0, 0.5], [1.0, 0.0]])
    ch = P.PixelChannel()
    assert ch.check(image, 2) == P.Evidence("pixel", (2, 1.0), True)
    with pytest.raises(ValueError, match="pixel request 4 is outside the image's 4 pixels"):
        ch.check(image, 4)
    with pytest.raises(ValueError, match="pixel request 0 names a zero pixel"):
        ch.check(image, 0)
    assert P.PixelChannel(nonzero_only=False).check(image, 0).content == (0, 0.0)
    with pytest.raises(TypeError, match="integer index"):
        ch.check(image, "2")
