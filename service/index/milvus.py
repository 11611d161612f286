"""A Milvus collection as the vector store of one embedder version (`pymilvus`, the `milvus` extra).

Layout: one collection per model tag (`collection_name`); primary key = the SQL face key (int64); the owning
identity's UUID stored beside the vector (VARCHAR), so a searcher needs no map of its own and API replicas
stay stateless; inner product on the model's unit vectors (equal to cosine there, and what GPU indexes such as
GPU_CAGRA support). Identity-level top-k is the engine's grouping search on the identity field (exact against
an exhaustive ranking on FLAT and HNSW in milvus-lite: docs/deployment.md).

The change-log position the store has applied is kept in the collection's properties: it describes the
collection's contents, so it is lost, restored or dropped together with them (a wiped Milvus reads as
"position unknown" and is re-synced from SQL, never trusted).

Usable outside the app (the scale bench):

    store = MilvusStore.connect("http://milvus:19530", model_tag="mobilefacenet@1", dim=128, index="HNSW")

Errors: `VectorStoreRefused` for a setting that cannot work (wrong URI, credentials, another dimension or
metric): a one-line refusal at start; `VectorStoreUnavailable` for an engine that fails at run time (503).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import numpy as np

if TYPE_CHECKING:
    from pymilvus import MilvusClient

    from service.config import Settings

log = logging.getLogger(__name__)

METRIC: Final = "IP"
KEY, IDENTITY, VECTOR = "key", "identity", "vector"
POSITION_PROPERTY: Final = "facebank.position"
MODEL_PROPERTY: Final = "facebank.model"
# Build and search parameters per index type (HNSW: the in-process FAISS HNSW defaults of service/config).
BUILD_PARAMS: Final[dict[str, dict[str, int]]] = {
    "HNSW": {"M": 32, "efConstruction": 80},
    "IVF_FLAT": {"nlist": 1024},
    "IVF_SQ8": {"nlist": 1024},
    "GPU_IVF_FLAT": {"nlist": 1024},
    "GPU_CAGRA": {"intermediate_graph_degree": 64, "graph_degree": 32},
}
SEARCH_PARAMS: Final[dict[str, dict[str, int]]] = {
    "HNSW": {"ef": 200},
    "IVF_FLAT": {"nprobe": 32},
    "IVF_SQ8": {"nprobe": 32},
    "GPU_IVF_FLAT": {"nprobe": 32},
    "GPU_CAGRA": {"itopk_size": 128},
}
_UPSERT_BATCH = 2000
_T = TypeVar("_T")


class VectorStoreUnavailable(RuntimeError):
    """The vector store cannot be reached or failed a request (answered 503 vector_store_unavailable)."""


class VectorStoreBehind(VectorStoreUnavailable):
    """A reader waited in vain for the writer to bring the collection up to a log position."""


class VectorStoreRefused(ValueError):
    """The configured store cannot serve: wrong URI or credentials, or a collection of another shape."""


def collection_name(prefix: str, model_tag: str) -> str:
    """`prefix_` + the tag, each character Milvus refuses in a name as `_` (names: letters, digits, _)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{prefix}_{model_tag}")


@dataclass(frozen=True, slots=True)
class MilvusTarget:
    """Where a store lives and how it is indexed (from settings, or given by hand)."""

    uri: str
    token: str = ""
    db_name: str = ""
    index: str = "FLAT"
    prefix: str = "facebank"
    timeout_s: float = 10.0

    @classmethod
    def of(cls, settings: Settings) -> MilvusTarget:
        return cls(
            uri=settings.milvus_uri,
            token=settings.milvus_token.get_secret_value() if settings.milvus_token else "",
            db_name=settings.milvus_db,
            index=settings.milvus_index,
            prefix=settings.milvus_collection_prefix,
            timeout_s=settings.milvus_timeout_s,
        )

    def client(self) -> MilvusClient:
        """A connected client, or VectorStoreRefused saying why not in one line."""
        if not self.uri:
            raise VectorStoreRefused(
                "FACEBANK_VECTOR_STORE=milvus needs FACEBANK_MILVUS_URI (http://host:19530, or a .db path)"
            )
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:
            raise VectorStoreRefused(
                "FACEBANK_VECTOR_STORE=milvus needs pymilvus: pip install 'facebank[milvus]'"
            ) from exc
        try:
            kwargs: dict[str, Any] = {"uri": self.uri, "timeout": self.timeout_s}
            if self.token:
                kwargs["token"] = self.token
            if self.db_name:
                kwargs["db_name"] = self.db_name
            client = MilvusClient(**kwargs)
            client.list_collections(timeout=self.timeout_s)
        except Exception as exc:  # pymilvus raises MilvusException, grpc or OS errors alike
            raise VectorStoreRefused(f"cannot use Milvus at {self.uri}: {_one_line(exc)}") from exc
        return client


class MilvusStore:
    """The collection of one model tag: upsert, delete, grouped search, keys, the applied position."""

    def __init__(self, client: MilvusClient, target: MilvusTarget, *, model_tag: str, dim: int) -> None:
        self._client = client
        self.target = target
        self.model_tag = model_tag
        self.dim = dim
        self.name = collection_name(target.prefix, model_tag)
        self._list_params: dict[str, int] = dict(SEARCH_PARAMS.get(target.index, {}))

    @classmethod
    def connect(
        cls,
        uri: str,
        *,
        model_tag: str,
        dim: int,
        token: str = "",
        db_name: str = "",
        index: str = "FLAT",
        prefix: str = "facebank",
        timeout_s: float = 10.0,
    ) -> MilvusStore:
        """Connect and open (or create) the model's collection; raises VectorStoreRefused."""
        target = MilvusTarget(uri, token, db_name, index, prefix, timeout_s)
        return cls.open(target, model_tag=model_tag, dim=dim)

    @classmethod
    def open(cls, target: MilvusTarget, *, model_tag: str, dim: int) -> MilvusStore:
        store = cls(target.client(), target, model_tag=model_tag, dim=dim)
        try:
            store.ensure_collection()
        except VectorStoreUnavailable as exc:
            raise VectorStoreRefused(str(exc)) from exc
        return store

    # --- the collection ---------------------------------------------------------------------------------

    def ensure_collection(self) -> None:
        """Create the collection if missing, refuse one of another shape, and load it for search."""
        from pymilvus import DataType, MilvusClient

        client = self._client
        if not self._call(client.has_collection, self.name):
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field(KEY, DataType.INT64, is_primary=True)
            schema.add_field(IDENTITY, DataType.VARCHAR, max_length=36)
            schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=self.dim)
            index = client.prepare_index_params()
            index.add_index(
                field_name=VECTOR,
                index_type=self.target.index,
                metric_type=METRIC,
                params=BUILD_PARAMS.get(self.target.index, {}),
            )
            try:
                self._call(
                    client.create_collection,
                    self.name,
                    schema=schema,
                    index_params=index,
                    properties={MODEL_PROPERTY: self.model_tag},
                )
            except VectorStoreUnavailable:
                # Another replica opening the same new model may have created it first: then use theirs.
                if not self._call(client.has_collection, self.name):
                    raise
            log.info("created Milvus collection %s (%s, %d dims)", self.name, self.target.index, self.dim)
        self._check_shape()
        self._call(client.load_collection, self.name)

    def _check_shape(self) -> None:
        described = self._call(self._client.describe_collection, self.name)
        fields = {f["name"]: f for f in described.get("fields", [])}
        vector = fields.get(VECTOR)
        if vector is None or KEY not in fields or IDENTITY not in fields:
            raise VectorStoreRefused(
                f"Milvus collection {self.name} lacks facebank's fields ({KEY}, {IDENTITY}, {VECTOR})"
            )
        dim = int(vector.get("params", {}).get("dim", 0))
        if dim != self.dim:
            raise VectorStoreRefused(
                f"Milvus collection {self.name} holds {dim}-dimensional vectors, but {self.model_tag} makes "
                f"{self.dim}: drop it or set FACEBANK_MILVUS_COLLECTION_PREFIX to another name"
            )
        index = self._call(self._client.describe_index, self.name, VECTOR) or {}
        metric = index.get("metric_type")
        if metric != METRIC:
            raise VectorStoreRefused(
                f"Milvus collection {self.name} is indexed with metric {metric}, facebank needs {METRIC} "
                "(inner product of unit vectors): drop it or use another FACEBANK_MILVUS_COLLECTION_PREFIX"
            )
        if index.get("index_type") != self.target.index:
            log.warning(
                "Milvus collection %s is indexed as %s, not FACEBANK_MILVUS_INDEX=%s; it keeps its index "
                "until dropped and re-synced",
                self.name,
                index.get("index_type"),
                self.target.index,
            )

    def drop(self) -> bool:
        """Drop the collection; True when it existed."""
        if not self._call(self._client.has_collection, self.name):
            return False
        self._call(self._client.drop_collection, self.name)
        return True

    # --- writes (the change-log applier only) -----------------------------------------------------------

    def upsert(self, keys: np.ndarray, identity_ids: Sequence[uuid.UUID], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, np.float32).reshape(-1, self.dim)
        for start in range(0, len(keys), _UPSERT_BATCH):
            rows = [
                {KEY: int(key), IDENTITY: str(identity), VECTOR: vector}
                for key, identity, vector in zip(
                    np.asarray(keys[start : start + _UPSERT_BATCH]).tolist(),
                    identity_ids[start : start + _UPSERT_BATCH],
                    vectors[start : start + _UPSERT_BATCH].tolist(),
                    strict=True,
                )
            ]
            self._call(self._client.upsert, self.name, rows)

    def delete(self, keys: Iterable[int]) -> None:
        doomed = [int(k) for k in keys]
        if doomed:
            self._call(self._client.delete, self.name, ids=doomed)

    def delete_identities(self, identity_ids: Iterable[uuid.UUID]) -> None:
        """Every face of these identities, and then a compaction, so their vectors leave the segments too."""
        doomed = ", ".join(f'"{identity}"' for identity in identity_ids)  # UUIDs: no quoting to escape
        if doomed:
            self._call(self._client.delete, self.name, filter=f"{IDENTITY} in [{doomed}]")
            self.compact()

    def flush(self) -> None:
        """Seal what was written into indexed segments. Milvus seals by itself in time, but milvus-lite
        searches unsealed rows without an index until ~128 MB of them (a 10k-face search: 467 ms before a
        flush, 20 ms after, docs/deployment.md); so after a bulk fill, not after every small batch (many
        tiny segments slow a server)."""
        self._call(self._client.flush, self.name)

    def compact(self) -> None:
        """Ask Milvus to rewrite segments without deleted rows (asynchronous on a server)."""
        self._call(self._client.compact, self.name)

    def applied_position(self) -> int | None:
        """The change-log position this collection has applied; None when unknown (new, or wiped)."""
        if not self._call(self._client.has_collection, self.name):
            return None
        described = self._call(self._client.describe_collection, self.name)
        value = (described.get("properties") or {}).get(POSITION_PROPERTY)
        return int(value) if value not in (None, "") else None

    def mark_applied(self, position: int) -> None:
        self._call(
            self._client.alter_collection_properties, self.name, properties={POSITION_PROPERTY: str(position)}
        )

    # --- reads --------------------------------------------------------------------------------------------

    def count(self) -> int:
        rows = self._call(self._client.query, self.name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def keys(self) -> np.ndarray:
        """Every face key in the collection, sorted."""
        found: list[int] = []

        def read_all() -> None:
            found.clear()
            iterator = self._client.query_iterator(
                self.name, batch_size=10_000, filter="", output_fields=[KEY], timeout=self.target.timeout_s
            )
            try:
                while batch := iterator.next():
                    found.extend(int(row[KEY]) for row in batch)
            finally:
                iterator.close()

        self._call(read_all)
        return np.sort(np.asarray(found, np.int64))

    def search_identities(self, queries: np.ndarray, k: int) -> list[list[tuple[uuid.UUID, float]]]:
        """Per query, the k best identities, each scored by its best face (Milvus grouping search)."""
        queries = np.asarray(queries, np.float32).reshape(-1, self.dim)
        if k <= 0 or not len(queries):
            return [[] for _ in range(len(queries))]
        hits = self._call(
            self._client.search,
            self.name,
            data=queries.tolist(),
            anns_field=VECTOR,
            limit=k,
            output_fields=[IDENTITY],
            group_by_field=IDENTITY,
            search_params=self._search_params_for(k),
        )
        return [[(uuid.UUID(hit["entity"][IDENTITY]), float(hit["distance"])) for hit in row] for row in hits]

    def _search_params_for(self, limit: int) -> dict[str, Any]:
        """The index's search list is at least `limit` (HNSW refuses ef < k; CAGRA itopk_size < k)."""
        params = dict(self._list_params)
        for list_size in ("ef", "itopk_size"):
            if list_size in params:
                params[list_size] = max(params[list_size], limit)
        return {"metric_type": METRIC, "params": params}

    def ping(self) -> None:
        """Raises VectorStoreUnavailable unless the collection answers."""
        self._call(self._client.get_load_state, self.name)

    def close(self) -> None:
        self._client.close()

    # --- errors -------------------------------------------------------------------------------------------

    def _call(self, method: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run one request; an engine restarted without our collection loaded gets it loaded and one retry.
        Every failure leaves as VectorStoreUnavailable."""
        if "timeout" not in kwargs and _takes_timeout(method):
            kwargs["timeout"] = self.target.timeout_s
        try:
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                if "load" not in str(exc).lower() or method == self._client.load_collection:
                    raise
                self._client.load_collection(self.name, timeout=self.target.timeout_s)
                return method(*args, **kwargs)
        except VectorStoreRefused:
            raise
        except Exception as exc:  # MilvusException, grpc errors: the store is away or refused the request
            raise VectorStoreUnavailable(f"Milvus at {self.target.uri}: {_one_line(exc)}") from exc


def _takes_timeout(method: Callable[..., Any]) -> bool:
    # MilvusClient's request methods all accept `timeout`; the local helpers (read_all) do not.
    return getattr(method, "__self__", None) is not None


def drop_collection(target: MilvusTarget, model_tag: str) -> bool:
    """Drop the collection of `model_tag` (`facebank models prune`); True when there was one. Raises
    VectorStoreRefused or VectorStoreUnavailable when Milvus cannot be asked."""
    store = MilvusStore(target.client(), target, model_tag=model_tag, dim=0)
    try:
        return store.drop()
    finally:
        store.close()


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout_s` passes; returns whether it held."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def _one_line(exc: BaseException) -> str:
    """The first line of the engine's message (pymilvus keeps it in `message`), at most 300 characters."""
    text = (getattr(exc, "message", None) or str(exc)).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
