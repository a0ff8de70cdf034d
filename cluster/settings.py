"""Typed settings for everything that runs in the cluster (env prefix FACEGRID_)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from platformdirs import user_cache_dir, user_data_dir
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DetectorSettings(BaseModel):
    # MTCNN's published defaults (Zhang et al. 2016; ipazc/mtcnn), except min_face_size: a face under 40 px is
    # upsampled almost 4x into the 150 px chip, too blurred to embed reliably; a shorter pyramid also halves P-Net time.
    min_face_size: int = 40
    scale_factor: float = 0.709
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.8)
    nms: tuple[float, float, float] = (0.5, 0.7, 0.7)
    # A second pass for images where nothing was found: looser P-/R-Net proposal thresholds, the same O-Net bar.
    # On lfw-dev it finds 6 of the 9 faces the first pass misses (all at O-Net confidence >= 0.96).
    retry_thresholds: tuple[float, float, float] | None = (0.4, 0.5, 0.8)
    # Detection runs on a copy scaled to at most this many pixels (a 21-megapixel photo: 0.9 s from bytes to faces
    # on one core here, where 40 unscaled took 10.6 s); the smallest face found in a larger photo grows with it
    # (80 px in a 24-megapixel one).
    max_pixels: int = 6_000_000
    # YuNet's bar for a face (its score: sqrt(class x objectness)). OpenCV's default, 0.9, misses the face of 150 of
    # lfw-dev's 5,176 evaluated (greyscale) photos, whose scores sit between 0.8 and 0.9; at 0.7 it misses none.
    yunet_score_threshold: float = 0.7


class RuntimeSettings(BaseModel):
    # None lets ONNX Runtime pick one thread per core: right for a lone process, too many inside Ray actors.
    intra_op_threads: int | None = None
    providers: list[str] | None = None
    # None: the model's own best batch on a CPU, GPU_EMBED_BATCH where CUDA runs the embedder.
    embed_batch_size: int | None = None


class ServingSettings(BaseModel):
    # Why a search is run; every search and compare must name one of these, and a case id.
    purposes: list[str] = [
        "criminal-investigation",
        "missing-person",
        "identity-verification",
        "deduplication",
        "consented-photo-search",
        "system-test",
    ]
    shard_timeout_s: float = 2.0
    # Actors per shard for collections created without a count: 2 or more on a cluster of several nodes, so that
    # losing one loses no answer (a collection's own count: `collections replicas`).
    replicas: int = 1
    # FAISS threads per shard actor. One is right for latency (a shard answers small batches, and shards share
    # the cores); raise it for throughput on a node with cores to spare. Index builds use every core.
    shard_threads: int = 1
    # Threads a shard host searches its shards with at once (one actor holds a set's shards of a node); 0: the
    # node's cores.
    host_threads: int = 0
    # Hold a collection's shards that the layout puts on this server's own node in the server's process, searched
    # without a Ray call (cluster/shards/local.py), where a shard has one replica; off: every host is an actor.
    local_shards: bool = True
    # Put Flat and IVF shards on a GPU when FAISS reports one in the shard's process (fp16 storage).
    shard_gpu: bool = True
    # Micro-batching: while `batch_in_flight` fan-outs to a collection are running, later queries wait and go
    # out together (up to `max_batch`), after `batch_window_ms` more to gather company. A lone query never waits.
    batch_in_flight: int = 1
    max_batch: int = 64
    batch_window_ms: float = 0.0
    # After a reshard the old shard set answers this long, for servers whose manifest is not yet fresh (1 s old at
    # most), then it is retired.
    retire_after_s: float = 10.0
    # The source (s3://bucket/prefix or a folder) whose objects IndexFaces may name by key instead of an upload;
    # none: uploads only.
    ingest_source: str | None = None
    max_upload_bytes: int = 20_000_000
    # A JSON body of /v1 (ids, a vector, options: a few kB in practice) is refused over this before it is read:
    # a list of millions of ids costs seconds of the event loop to decode, whoever sends it.
    max_json_bytes: int = 1_000_000
    # The console is served over TLS (directly or behind a proxy): its cookies are then Secure, and the session
    # cookie takes the __Host- prefix (no Domain, Path=/), so no other host or plain-HTTP page can set it.
    console_tls: bool = False
    # Probe photos that may wait for one of the two probe threads; more at once are answered 429 (Retry-After).
    max_waiting_photos: int = 6
    # Routes that need no key (transparency, health): requests a second per client address, and the burst.
    public_rate_per_s: float = 20.0
    public_burst: int = 40
    max_results: int = 100
    # The most shards a collection may have here: each is an index and its records, written by every publish and
    # loaded by a host (a rebuild of 500 shards took minutes on 2 cores). At most the manifest's own 1,024.
    max_shards: int = Field(default=256, ge=1, le=1024)
    # The Fernet key that seals Rekognition-protocol secrets and session tokens (cluster/keys/credentials.py); every
    # server of a deployment needs the same one. None: a key file created beside the user's configuration.
    credential_key: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACEGRID_", env_nested_delimiter="__", extra="ignore")

    model_dir: Path = Field(default_factory=lambda: Path(user_cache_dir("facegrid")) / "models")
    # Where shard actors keep the files of snapshots read from S3 (ids, records, exact vectors), read on demand.
    shard_cache: Path = Field(default_factory=lambda: Path(user_cache_dir("facegrid")) / "shards")
    store: str = Field(default_factory=lambda: str(Path(user_data_dir("facegrid")) / "store"))
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_region: str = "us-east-1"
    s3_secure: bool = False
    # A 6000x4000 camera photo; decoding one takes 72 MB. A header over it is refused before its pixels exist.
    max_image_pixels: int = 24_000_000
    detector: DetectorSettings = DetectorSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    serving: ServingSettings = ServingSettings()


# Where a deployment keeps secrets as files named after their settings (facegrid_s3_secret_key, ...): a mounted
# Kubernetes Secret, or a folder only the cluster's user can read. Read before the environment's values.
SECRETS_DIR_ENV = "FACEGRID_SECRETS_DIR"
# Settings that are secrets: they never travel with a submitted job (jobs/submit.py); the cluster has its own.
SECRET_FIELDS: dict[str, Any] = {"s3_access_key": True, "s3_secret_key": True, "serving": {"credential_key": True}}


def load_settings() -> Settings:
    """This process's settings: the environment (FACEGRID_...), and secret files where SECRETS_DIR_ENV names them."""
    secrets = os.environ.get(SECRETS_DIR_ENV)
    return Settings(_secrets_dir=secrets) if secrets else Settings()  # type: ignore[call-arg]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
