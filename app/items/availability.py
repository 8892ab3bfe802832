"""Whether the objects that items were imported from by reference are still there (DESIGN 4d).

An item imported by reference keeps no bytes of its own: its object may be deleted from the
bucket (or replaced) after the import. Whatever reads items in bulk then leaves that item out and
says so, rather than failing a whole job: an embedding chunk embeds the rest, a round's loading
raises ``ObjectsGone`` so the round can drop those items and go on, and the batch a round is
about to save is checked by a HEAD of each selected item's object (``gone_objects``).
Items whose bytes are in the item store (uploads) are never checked here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from app.db import unit_of_work
from app.items.service import sources_by_hash
from app.storage import ObjectMissing, parse_s3_url, read_image, source_store

# HEAD requests in flight at once: each waits on the network.
CHECK_THREADS = 16


class ObjectsGone(Exception):
    """Items whose objects are gone: ``gone`` maps each content hash to the reason."""

    def __init__(self, gone: Mapping[str, str]) -> None:
        self.gone = dict(gone)
        first = next(iter(self.gone.values()), "")
        super().__init__(f"{len(self.gone)} items' objects are gone (e.g. {first})")


def _head(source: str) -> str | None:
    """Why ``source`` cannot be read, or None when it is there."""
    bucket, key = parse_s3_url(source)
    try:
        source_store(bucket).head(key)
    except ObjectMissing as exc:
        return str(exc)
    return None


def gone_objects(project_id: int, hashes: Sequence[str]) -> dict[str, str]:
    """{content hash: reason} for the items among ``hashes`` imported by reference whose object
    is no longer in its bucket. StoreUnavailable goes up: a store that does not answer is not a
    deleted object."""
    with unit_of_work(write=False) as db:
        sources = sources_by_hash(db, project_id=project_id, hashes=list(hashes))
    if not sources:
        return {}
    with ThreadPoolExecutor(min(CHECK_THREADS, len(sources))) as pool:
        reasons = dict(zip(sources, pool.map(_head, sources.values()), strict=True))
    return {h: reason for h, reason in reasons.items() if reason is not None}


def readable(
    hashes: Iterable[str], sources: Mapping[str, str], gone: dict[str, str]
) -> Iterator[tuple[str, bytes]]:
    """(hash, bytes) of each image that can be read; those whose object is gone are noted in
    ``gone`` with the reason and left out."""
    for digest in hashes:
        try:
            yield digest, read_image(digest, sources.get(digest))
        except ObjectMissing as exc:
            if digest not in sources:
                raise  # an uploaded image missing from the item store is not a deleted object
            gone[digest] = str(exc)
