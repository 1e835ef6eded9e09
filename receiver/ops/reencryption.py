"""Re-encryption: move every stored body under the newest encryption key (key rotation).

Plaintext bodies get encrypted too. Each body is swapped by a compare-and-set script, so a
body that expired or changed meanwhile is left alone (see ``receiver/lua/reencrypt.lua``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from receiver.bodies import BodyCipher, BodyDecryptError
from receiver.ops.events import PAGE_SIZE, Progress
from receiver.store import EventStore


@dataclass(slots=True)
class ReencryptResult:
    """Bodies moved to the first key; ``gone`` expired meanwhile; ``failed`` no key opens."""

    total: int = 0
    rotated: int = 0
    gone: int = 0
    failed: list[str] = field(default_factory=list)


async def count_stored(store: EventStore) -> int:
    """How many events are stored (for a progress bar's total)."""
    return await store.count_stored()


async def reencrypt(
    store: EventStore, cipher: BodyCipher, progress: Progress | None = None
) -> ReencryptResult:
    """Re-encrypt every stored body under the newest (first) key; plaintext gets encrypted.

    Raises BodyDecryptError when no encryption key is configured.
    """
    if not cipher.enabled:
        raise BodyDecryptError("RECEIVER_ENCRYPTION_KEYS is not set")
    result = ReencryptResult(total=await store.count_stored())
    done = 0
    for shard in store.all_shards():
        cursor = 0
        while True:
            cursor, page = await store.scan_bodies(shard, cursor, PAGE_SIZE)
            for member, body, encrypted in page:
                done += 1
                if body is None:
                    result.gone += 1
                else:
                    await _rotate_one(store, cipher, member, body, encrypted, result)
                if progress is not None:
                    progress(done, max(done, result.total))
            if cursor == 0:
                break
    return result


async def _rotate_one(
    store: EventStore,
    cipher: BodyCipher,
    member: str,
    body: bytes,
    encrypted: bool,
    result: ReencryptResult,
) -> None:
    try:
        sealed = cipher.rotate(body, encrypted)
    except BodyDecryptError:
        result.failed.append(member)
        return
    if await store.replace_body(member, body, sealed):
        result.rotated += 1
    else:
        result.gone += 1
