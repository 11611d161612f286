"""Enroll the first photo of N LFW people over HTTP, identify their second photos: top-1 and stage times.

Usage (against a running server):
    python -m bench.lfw_http --url http://127.0.0.1:8000 --lfw ../shared/data/lfw --people 100
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import httpx

from bench.data import lfw_people_with_two_photos
from bench.server import centre_face, server_timing


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--lfw", type=Path, default=Path("../shared/data/lfw"))
    parser.add_argument("--people", type=int, default=100)
    args = parser.parse_args()

    names = lfw_people_with_two_photos(args.lfw, args.people)
    client = httpx.Client(base_url=args.url, timeout=60)
    ids: dict[str, str] = {}
    enroll_failures = []
    for name in names:
        identity = client.post(
            "/v1/identities", json={"name": name, "metadata": {"source": "lfw-bench"}}
        ).json()
        photo = args.lfw / name / f"{name}_0001.jpg"
        response = client.post(f"/v1/identities/{identity['id']}/faces", files={"image": photo.open("rb")})
        if response.status_code != 201:
            enroll_failures.append((name, response.json()["error"]["code"]))
        ids[name] = identity["id"]

    correct = unknown = no_face = 0
    stage_ms: dict[str, list[float]] = {}
    round_trips = []
    for name in names:
        photo = args.lfw / name / f"{name}_0002.jpg"
        start = time.perf_counter()
        response = client.post("/v1/identify", params={"k": 5}, files={"image": photo.open("rb")})
        round_trips.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
        for stage, ms in server_timing(response.headers.get("server-timing", "")).items():
            stage_ms.setdefault(stage, []).append(ms)
        faces = response.json()["faces"]
        face = centre_face(faces)
        if face is None:
            no_face += 1
            continue
        if face["matches"] and face["matches"][0]["identity_id"] == ids[name]:
            correct += 1
        if face["identity"] is None:
            unknown += 1

    for identity_id in ids.values():
        client.delete(f"/v1/identities/{identity_id}")
    print(f"people: {len(names)}, enroll failures: {enroll_failures or 'none'}")
    print(
        f"top-1: {correct}/{len(names)} = {100 * correct / len(names):.1f} %  (no face: {no_face}, "
        f"below threshold: {unknown})"
    )
    print("median per stage (server-side, identify):")
    for stage, values in stage_ms.items():
        print(f"  {stage:8} {statistics.median(values):7.2f} ms")
    print(f"  {'total':8} {statistics.median(round_trips):7.2f} ms round trip (client side, p50)")


if __name__ == "__main__":
    main()
