"""Batch ingestion: scan a folder or CSV manifest, gate each photo's face, store it exactly once.

`scan` finds the photos, `gates` decides which face (if any) to enroll, `embedded` writes into the configured
database, `remote` goes through a running server's REST API, `cli` is the `facebank ingest` command.
"""
