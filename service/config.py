"""One typed settings object, read from the environment (prefix FACEBANK_) and validated at start."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def split_list(value: str) -> list[str]:
    """A comma-separated setting as its items (a plain string keeps `FACEBANK_X=a,b` readable)."""
    return [item.strip() for item in value.split(",") if item.strip()]


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "facebank"


def _user_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "facebank"


# The embedder a fresh database records on its first start (docs/accuracy.md, "Default model"); its weights
# are non-commercial, as are MobileFaceNet's in practice (README, "Licences").
DEFAULT_EMBEDDER = "edgeface-xs-q"

# How a person enrolled with several faces is scored; the rule itself is service/templates.py.
IdentityScore = Literal["mean", "best"]
MilvusIndexType = Literal["FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8", "GPU_CAGRA", "GPU_IVF_FLAT", "AUTOINDEX"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACEBANK_", env_file=None, extra="ignore")

    data_dir: Path = Field(default_factory=_user_data_dir, description="SQLite file and other local state.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default is a SQLite file in data_dir."
    )
    model_dir: Path = Field(default_factory=_user_cache_dir, description="Prepared ONNX models + manifest.")
    detector: str = "retinaface-mnet025"
    embedder: str = Field(
        default=DEFAULT_EMBEDDER,
        description="The embedder a fresh database records; after that the database's choice wins "
        "(`facebank models use`), and a different explicit value refuses to start.",
    )
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    intra_op_threads: int = Field(default=0, ge=0, description="onnxruntime threads; 0 lets it decide.")
    search_threads: int = Field(default=1, ge=0, description="FAISS OpenMP threads; 0 keeps its default.")
    index_fp16: bool = Field(
        default=True, description="GPU index keeps vectors as fp16 (half the memory traffic); ignored on CPU."
    )
    index_type: Literal["flat", "hnsw", "ivf"] = Field(
        default="flat",
        description="flat: exact search (CPU or GPU); hnsw / ivf: approximate search on the CPU (FAISS HNSW "
        "or IVF-Flat), for galleries where flat is too slow; refused with device=cuda.",
    )
    hnsw_m: int = Field(default=32, ge=2, le=256, description="HNSW links per face: memory and recall.")
    hnsw_ef_construction: int = Field(
        default=80, ge=1, le=4096, description="HNSW build candidate list: build time vs graph quality."
    )
    hnsw_ef_search: int = Field(
        default=200, ge=1, le=65_536, description="HNSW search candidate list (at least k): speed vs recall."
    )
    ivf_nlist: int = Field(
        default=1024, ge=1, le=1_048_576, description="IVF cells (k-means centroids): about 1-4 × √gallery."
    )
    ivf_nprobe: int = Field(
        default=32, ge=1, le=1_048_576, description="IVF cells scanned per query: speed vs recall."
    )
    ivf_min_per_list: int = Field(
        default=39,
        ge=1,
        le=10_000,
        description="IVF searches exactly until the gallery holds this many faces per cell, then trains "
        "on them.",
    )
    identity_score: IdentityScore = Field(
        default="mean",
        description="How a person enrolled with several faces is scored: mean = cosine to the normalised "
        "mean of their faces (fewer strangers taken for them), best = cosine to their closest face "
        "(service/templates.py).",
    )
    vector_store: Literal["faiss", "milvus"] = Field(
        default="faiss",
        description="faiss: an in-process index per server, rebuilt from SQL at start; milvus: one Milvus "
        "collection per embedder that every replica searches and one elected process fills from the change "
        "log (docs/deployment.md).",
    )
    milvus_uri: str = Field(
        default="",
        description="A Milvus server (http://host:19530) or a milvus-lite data path ending in .db (one "
        "process only); required with vector_store=milvus.",
    )
    milvus_token: SecretStr | None = Field(
        default=None, description="Milvus credentials, `user:password` or an API key; never logged."
    )
    milvus_db: str = Field(default="", description="Milvus database; empty: the server's default.")
    milvus_index: MilvusIndexType = Field(
        default="FLAT",
        description="Index type of new collections (inner product on unit vectors; GPU_* need a GPU build).",
    )
    milvus_collection_prefix: str = Field(
        default="facebank",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
        description="Collections are named PREFIX_<model tag>, one per embedder version.",
    )
    milvus_timeout_s: float = Field(
        default=10.0, gt=0.0, le=600.0, description="Longest wait for one Milvus request."
    )
    milvus_applied_wait_s: float = Field(
        default=5.0,
        ge=0.0,
        le=60.0,
        description="How long a request that wrote waits for the elected writer to apply it to Milvus "
        "(read-your-writes on every replica); the write is committed either way.",
    )
    embedder_precision: Literal["fp32", "fp16"] = Field(
        default="fp32", description="fp16 runs the half-precision export of the embedder; CUDA only."
    )
    batch_max_size: int = Field(
        default=16, ge=1, le=256, description="Concurrent identify requests gathered into one model call."
    )
    batch_max_wait_ms: float = Field(
        default=0.0, ge=0.0, le=50.0, description="How long the first request waits for company; 0 disables."
    )

    follow_poll_ms: float = Field(
        default=200.0,
        gt=0.0,
        le=60_000.0,
        description="How often each process reads the change log for other processes' writes (PostgreSQL "
        "also wakes it at once by NOTIFY).",
    )
    max_follow_lag_s: float = Field(
        default=30.0, gt=0.0, description="/readyz turns unready when the index is this far behind SQL."
    )
    changes_retention_s: float = Field(
        default=86_400.0,
        gt=0.0,
        description="Change log entries older than this are pruned; a process further behind rebuilds.",
    )

    detect_max_side: int = Field(default=640, ge=64, le=4096)
    detect_find_down_to: int = Field(
        default=32,
        ge=0,
        le=4096,
        description="Smallest face side (photo px) looked for: a photo that detect_max_side shrinks too far "
        "for such faces also gets a finer pass; 0 looks only at the shrunk photo.",
    )
    det_score_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    min_face_size: int = Field(default=0, ge=0, description="Faces with a shorter box side are ignored.")
    max_faces: int = Field(
        default=64,
        ge=1,
        description="A photo with more faces is refused whole: 422 too_many_faces from the API (identify, "
        "verify, detect, enrol), a too_many_faces reject in ingest.",
    )

    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=40_000_000, ge=10_000)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: str = "info"

    api_key: SecretStr | None = Field(
        default=None,
        description="Key that client commands (identify, ingest --url, doctor --server) send to a server.",
    )
    server_url: str = Field(
        default="http://127.0.0.1:8000",
        description="The server `facebank identify` asks when no --url is given.",
    )
    # Access from outside (docs/security.md). Lists are comma-separated in the environment.
    trusted_proxies: str = Field(
        default="",
        description="Addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For is believed; "
        "empty: none.",
    )
    allowed_hosts: str = Field(
        default="",
        description="Host header values served besides loopback names and the bind address "
        "(`*.example.com` matches subdomains, `*` anything).",
    )
    # Why 32: a burst the size of two micro-batches (batch_max_size) gets through, and slots plus waiting
    # requests (one worker thread each) stay within anyio's 40 threads on up to 8 cores.
    image_queue: int = Field(
        default=32, ge=0, description="Requests that may wait for an image slot; more get 503 busy at once."
    )
    rate_limit_per_key: int = Field(
        default=0, ge=0, description="Requests per minute one API key may make; 0: unlimited."
    )
    failed_auth_limit: int = Field(
        default=30, ge=0, description="Wrong API keys per minute one client address may send; 0: off."
    )

    @field_validator("data_dir", "model_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("trusted_proxies", mode="after")
    @classmethod
    def _valid_networks(cls, value: str) -> str:
        for item in split_list(value):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or network") from exc
        return value

    @property
    def trusted_proxy_list(self) -> list[str]:
        return split_list(self.trusted_proxies)

    @property
    def allowed_host_list(self) -> list[str]:
        return [host.lower() for host in split_list(self.allowed_hosts)]

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'facebank.db'}"
