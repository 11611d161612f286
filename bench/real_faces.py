"""Real face embeddings for the `scale` section, cached as .npz (never committed: they come from ../shared).

celeba-train's embeddings shape the synthetic gallery (how far a face lies from its identity's centre, how
identity centres spread); LFW's are mixed into the gallery as real faces and their recall is a test figure
only (nothing is chosen on LFW).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def embed_folder(
    root: Path, cache: Path, *, embedder: str, model_dir: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(unit embeddings (n, dim) float32, identity number per row) of one face per image under
    `root/<identity>/` by `embedder`, images without a face left out; read from `cache` when it exists."""
    if cache.exists():
        with np.load(cache) as saved:
            return saved["embeddings"], saved["identities"]
    from models.evaluation.folders import list_identity_folders
    from models.evaluation.run import embed_paths
    from service.config import Settings

    images = list_identity_folders(root)
    settings = Settings(embedder=embedder)
    if model_dir is not None:
        settings = settings.model_copy(update={"model_dir": model_dir})
    embedded = embed_paths(
        settings, [image.path for image in images], choice="central", cache_dir=None, progress=print
    )
    names = sorted({image.identity for image in images})
    number = {name: i for i, name in enumerate(names)}
    identities = np.array([number[image.identity] for image in images], np.int64)
    embeddings = embedded.embeddings
    found = ~np.isnan(embeddings).any(axis=1)
    embeddings, identities = np.ascontiguousarray(embeddings[found]), identities[found]
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, embeddings=embeddings, identities=identities)
    return embeddings, identities


if __name__ == "__main__":  # python -m bench.real_faces ROOT CACHE.npz EMBEDDER [MODEL_DIR]
    vectors, ids = embed_folder(
        Path(sys.argv[1]),
        Path(sys.argv[2]),
        embedder=sys.argv[3],
        model_dir=Path(sys.argv[4]) if len(sys.argv) > 4 else None,
    )
    print(vectors.shape, len(set(ids.tolist())), "identities")
