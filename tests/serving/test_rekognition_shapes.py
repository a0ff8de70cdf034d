"""The Rekognition request checks against botocore's shape model, without a server: what a hostile body may hold."""

from __future__ import annotations

import pytest

from serving.rekognition.shapes import InvalidParameter, checked

FACE = "5f2c3c1e-3c4b-4f4e-9a51-2b8f3f0e6a10"


@pytest.mark.parametrize("threshold", [10**400, -(10**400), True, "80", float("nan")])
def test_a_threshold_that_is_no_finite_number_is_refused(threshold: object) -> None:
    with pytest.raises(InvalidParameter, match="FaceMatchThreshold must be a finite number"):
        checked("SearchFaces", {"CollectionId": "c", "FaceId": FACE, "FaceMatchThreshold": threshold})


def test_an_integer_threshold_is_taken_as_a_float() -> None:
    params = checked("SearchFaces", {"CollectionId": "c", "FaceId": FACE, "FaceMatchThreshold": 80})
    assert params["FaceMatchThreshold"] == 80.0 and isinstance(params["FaceMatchThreshold"], float)
