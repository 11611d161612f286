"""What scoring people by the mean of their faces (service/templates.py) costs a search, against the best-face
rule, through the service's `Gallery` (flat FAISS index) over a real database: synthetic unit vectors,
`--per-person` faces each, one query at a time.

    PYTHONPATH=. python -m bench.identity_score --people 10000 --per-person 3
    PYTHONPATH=. python -m bench.identity_score --people 10000 --per-person 3 \\
        --database-url postgresql+psycopg://127.0.0.1/test

Prints, per rule, the p50 and p90 of `Gallery.identify` in ms; the rules alternate twice, so drift shows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path
from typing import get_args

import numpy as np
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from service.config import IdentityScore
from service.gallery import Gallery
from service.index import make_index
from service.storage import make_engine, make_session_factory, upgrade_to_head
from service.storage import repository as repo
from service.storage.tables import Face, Identity

MODEL = "bench@1"


def _fill(sessions: sessionmaker[Session], centres: np.ndarray, per_person: int, spread: float) -> None:
    rng = np.random.default_rng(1)
    with sessions() as session:
        people = [uuid.uuid4() for _ in range(len(centres))]
        session.execute(insert(Identity), [{"id": i, "name": f"person {n}"} for n, i in enumerate(people)])
        for start in range(0, len(people), 1000):
            rows = []
            for n in range(start, min(start + 1000, len(people))):
                faces = centres[n] + spread * rng.standard_normal((per_person, centres.shape[1]))
                for f, face in enumerate(faces):
                    rows.append(
                        {
                            "id": uuid.uuid4(),
                            "identity_id": people[n],
                            "embedding": repo.to_bytes((face / np.linalg.norm(face)).astype(np.float32)),
                            "dim": centres.shape[1],
                            "model": MODEL,
                            "bbox": [0, 0, 1, 1],
                            "det_score": 1.0,
                            "landmarks": None,
                            "image_sha256": f"{n}-{f}".rjust(64, "0"),
                        }
                    )
            session.execute(insert(Face), rows)
        session.commit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--per-person", type=int, default=3)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--database-url", help="an empty database (default: a new SQLite file)")
    args = parser.parse_args(argv)
    url = args.database_url or f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.people, args.dim)).astype(np.float32)
    _fill(sessions, centres, args.per_person, spread=0.7)
    chosen = centres[rng.integers(0, args.people, args.queries)]
    queries = chosen + 0.7 * rng.standard_normal(chosen.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    print(f"{args.people} people × {args.per_person} faces, {args.dim}-d, {engine.dialect.name}")
    rules: tuple[IdentityScore, ...] = get_args(IdentityScore)
    for rule in rules * 2:
        gallery = Gallery(make_index(args.dim), sessions, MODEL, identity_score=rule)
        gallery.rebuild()
        gallery.identify(queries[:1], 1)  # warm-up
        times = []
        for query in queries:
            start = time.perf_counter()
            gallery.identify(query[None, :], 1)
            times.append(1000 * (time.perf_counter() - start))
        print(f"  {rule:>4}: p50 {np.median(times):.2f} ms, p90 {np.percentile(times, 90):.2f} ms")
    engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
