"""What one request may hold: the bounds the use cases check (each with its own typed refusal) and the schemas
state. Below both, so that neither imports the other for them."""

from __future__ import annotations

MAX_PURPOSE = 64
MAX_CASE_ID = 128  # a case reference, not a document: every search's audit record carries it
MAX_EXTERNAL_ID = 255
MAX_FACES_INDEXED = 100  # faces one photo adds, largest first
MAX_FACE_INDEX = 99  # the probe's face a search may pick (0: the largest)
MAX_KNOB = 4096  # nprobe and efSearch: at 4,096 an IVF search is close to exhaustive, more only burns CPU
MAX_IDS = 4096  # ids one request may name: Rekognition's own bound on DeleteFaces' FaceIds
MAX_PAGE = 1000  # records one page shows
MAX_USERS = 100  # people one search answers (Rekognition's MaxUsers bound)
