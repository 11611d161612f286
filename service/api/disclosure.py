"""What recognition answers reveal about the gallery to a caller who may not read it.

A caller who may read identities (`enroll` or `admin`) may list the gallery anyway, so identify and verify
tell them everything they ask for. A caller with only `identify` gets what recognising a person needs and
nothing that lists or probes the gallery:

- identify: only matches scoring at or above the server's threshold (a lower `threshold` is raised to it,
  a higher one is kept), at most `IDENTIFY_ONLY_MAX_K` per face;
- verify against an enrolled identity: `match` and `threshold`, and the score only when it is a match (a
  score below the threshold would let a caller steer a photo towards someone; two uploaded photos involve no
  gallery, so their score is always given);
- detect: boxes and landmarks only, as for everyone; it never reads the gallery.
"""

from __future__ import annotations

from service.security import Principal, Scope

IDENTIFY_ONLY_MAX_K = 5


def reads_gallery(caller: Principal) -> bool:
    return caller.allows(Scope.ENROLL)


def identify_limits(
    caller: Principal, k: int, threshold: float | None, server_threshold: float
) -> tuple[int, float | None]:
    """(k, the score under which matches are left out, or None for none) for this caller's identify."""
    if reads_gallery(caller):
        return k, None
    floor = server_threshold if threshold is None else max(threshold, server_threshold)
    return min(k, IDENTIFY_ONLY_MAX_K), floor
