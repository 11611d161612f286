"""How a person enrolled with several faces is scored against a query face: the one home of that rule.

- ``mean`` (the default): the cosine to the normalised mean of the person's faces, their *template*;
- ``best``: the cosine to their closest face.

A person with one face gets that face's cosine either way. Measured on 209 CelebA people, 3 photos
enrolled each where they had 5 (docs/accuracy.md, *Decisions on 209 CelebA people*): closed-set top-1 is
the same within half a point, but at FPIR 1 % the mean finds 10.8 points more of the enrolled people for
EdgeFace-XS (1.6 for MobileFaceNet), because by the best face a stranger gets one chance per enrolled photo.

Vector stores hold single faces and rank people by their best face. `rescored` asks them for more people
than wanted (`candidates_for`), reads those people's faces from SQL, the truth, and ranks them by their
templates (which candidates are read, and so see SQL's latest faces: `rescored`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection

import numpy as np
from sqlalchemy.orm import Session

from service.config import IdentityScore
from service.storage import repository as repo

Ranked = list[list[tuple[uuid.UUID, float]]]


def template(faces: np.ndarray) -> np.ndarray:
    """The normalised mean of a person's unit face vectors (n, dim)."""
    total = np.asarray(faces, np.float64).sum(axis=0)
    norm = float(np.linalg.norm(total))
    return (total / norm if norm > 0 else total).astype(np.float32)


def identity_score(query: np.ndarray, faces: np.ndarray, rule: IdentityScore) -> float:
    """The score of one person, enrolled with `faces` (n, dim), against a unit query vector."""
    faces = np.asarray(faces, np.float32).reshape(-1, len(query))
    if rule == "best" or len(faces) == 1:
        return float((faces @ query).max())
    return float(template(faces) @ query)


def candidates_for(k: int, rule: IdentityScore) -> int:
    """How many people to ask a best-face store for, so that re-ranking by template finds the top `k`.

    A person's template can outscore their best face (the mean of faces around the query points at it more
    closely than any one of them), so the true top `k` may sit lower in the best-face ranking; 4 k, and at
    least 32, found the exact template ranking's first person for every probe measured (docs/accuracy.md).
    """
    return k if rule == "best" else max(4 * k, 32)


def rescored(
    sessions: Callable[[], Session],
    model_tag: str,
    queries: np.ndarray,
    ranked: Ranked,
    k: int,
    rule: IdentityScore,
    *,
    several_faces: Collection[uuid.UUID] | None = None,
) -> Ranked:
    """The top `k` of each query's best-face `ranked` candidates under `rule`.

    `several_faces`: the candidates known to have more than one face (a store that keeps count says so; the
    others keep the store's score, and SQL is not asked when no candidate has several); None reads every
    candidate's faces. A candidate whose faces were read is scored from SQL alone: a face deleted there no
    longer counts, and one with no face left is dropped, whatever the store still holds. One the store counts
    as single-faced is not read, so until this process applies a change its store's view stands (the
    follower's lag, as for every search).
    """
    if rule == "best":
        return [row[:k] for row in ranked]
    wanted = {i for row in ranked for i, _ in row if several_faces is None or i in several_faces}
    templates: dict[uuid.UUID, np.ndarray] = {}
    if wanted:
        with sessions() as session:
            faces = repo.embeddings_of_identities(session, identity_ids=wanted, model=model_tag)
        templates = {i: template(vectors) for i, vectors in faces.items()}
    out: Ranked = []
    for query, row in zip(queries, ranked, strict=True):
        scores = [
            (i, float(templates[i] @ query) if i in templates else score)
            for i, score in row
            if i in templates or i not in wanted
        ]
        out.append(sorted(scores, key=lambda item: -item[1])[:k])
    return out
