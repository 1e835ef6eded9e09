"""Re-encryption: move every stored body under the newest encryption key (key rotation).

Plaintext bodies get encrypted too. Each body is swapped by a compare-and-set script, so a
body that expired or changed meanwhile is left alone (see ``receiver/lua/reencrypt.lua``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from receiver.bodies import BodyCipher, BodyDecryptError
from receiver.keys import all_shards
from receiver.ops.events import PAGE_SIZE, Progress
from receiver.store import EventStore, load_lua

REENCRYPT_SCRIPT = load_lua("reencrypt")


@dataclass(slots=True)
class ReencryptResult:
    """Bodies moved to the first key; ``gone`` expired meanwhile; ``failed`` no key opens."""

    total: int = 0
    rotated: int = 0
    gone: int = 0
    failed: list[str] = field(default_factory=list)


async def reencrypt(
    store: EventStore, cipher: BodyCipher, progress: Progress | None = None
) -> ReencryptResult:
    """Re-encrypt every stored body under the newest (first) key; plaintext gets encrypted.

    Raises BodyDecryptError when no encryption key is configured.
    """
    if not cipher.enabled:
        raise BodyDecryptError("RECEIVER_ENCRYPTION_KEYS is not set")
    shards = all_shards(store.shards)
    result = ReencryptResult()
    for shard in shards:
        result.total += int(await store.client.zcard(shard.index))
    done = 0
    for shard in shards:
        # ZSCAN rather than offset pages: events may expire from the index meanwhile.
        cursor = 0
        while True:
            cursor, page = await store.client.zscan(shard.index, cursor, count=PAGE_SIZE)
            members = [raw.decode() for raw, _score in page]
            pipe = store.client.pipeline(transaction=False)
            for member in members:
                pipe.hmget(store.keys(member).event(member), "body", "encrypted")
            stored = await pipe.execute() if members else []
            for member, (body, encrypted) in zip(members, stored, strict=True):
                done += 1
                if body is None:
                    result.gone += 1
                else:
                    await _rotate_one(store, cipher, member, body, encrypted == b"1", result)
                if progress is not None:
                    progress(done, max(done, result.total))
            if int(cursor) == 0:
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
    changed = await store.client.eval(
        REENCRYPT_SCRIPT, 1, store.keys(member).event(member), body, sealed
    )
    if int(changed):
        result.rotated += 1
    else:
        result.gone += 1
