"""On-disk cache of embeddings, per encoder and per text.

Layout::

    <cache_dir>/                          ~/.cache/hn_trainer/embeddings or $HN_TRAINER_CACHE/embeddings
      <encoder-slug>-<fingerprint[:16]>/  one folder per encoder fingerprint
        encoder.json                      spec, kind, fingerprint, dim (for people; not read back)
        shards/<digest>.npz               keys: sha1 digests of texts (S20), vectors: float32 [n, dim]

A shard is written with `hn_trainer.io.atomic_path`: it appears complete under its final
name or not at all, so an interrupted run leaves nothing a later run would trust (only hidden
``.*.tmp`` leftovers after a hard kill, which are ignored and swept later). A shard that fails
to load or is malformed is skipped with a warning. The cache's width is decided by all the
shards together (the ``dim`` in ``encoder.json``, else the width most vectors have), so one
shard of another width is skipped without hiding the others. Re-running with the same texts
encodes nothing; new texts are encoded and added as a new shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hn_trainer.embeddings.base import Encoder
from hn_trainer.embeddings.distributed import encode_sharded
from hn_trainer.embeddings.packaged import cache_root
from hn_trainer.errors import EncoderError
from hn_trainer.io import atomic_path, sweep_stale_temporaries, write_json

logger = logging.getLogger(__name__)

MAX_SHARDS = 64
_KEY_BYTES = 20  # sha1 digest
_STALE_TMP_SECONDS = 24 * 3600


def default_cache_dir() -> Path:
    """``$HN_TRAINER_CACHE/embeddings``, or ``~/.cache/hn_trainer/embeddings``."""
    return cache_root() / "embeddings"


def text_key(text: str) -> bytes:
    """The cache key of a text: its sha1 digest (20 bytes)."""
    return hashlib.sha1(text.encode("utf-8")).digest()


def encoder_folder_name(encoder: Encoder) -> str:
    """``<readable slug>-<fingerprint prefix>``: one folder per distinct encoder configuration."""
    target = encoder.spec.target
    base = Path(target).name if ("/" in target and Path(target).is_absolute()) else target
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{encoder.kind}-{base}" if base else encoder.kind).strip("_")[
        :60
    ]
    return f"{slug}-{encoder.fingerprint[:16]}"


class EmbeddingCache:
    """Vectors of one encoder keyed by text digest, in memory and (optionally) in shard files.

    Args:
        folder: The encoder's cache folder, or ``None`` to keep vectors in memory only.
        meta: Written to ``encoder.json`` with the first shard.
    """

    def __init__(self, folder: str | os.PathLike | None, *, meta: dict | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.meta = meta or {}
        self._dim: int | None = None
        self._index: dict[bytes, tuple[int, int]] = {}
        self._blocks: list[np.ndarray] = []
        self._block_keys: list[list[bytes]] = []
        # shards of another width than the cache's, kept aside in case the encoder proves them right
        self._shelved: dict[int, list[tuple[list[bytes], np.ndarray]]] = {}
        self._meta_dim_wrong = False
        self.shards_loaded = 0
        if self.folder is not None:
            self._load()

    @property
    def shard_dir(self) -> Path | None:
        return self.folder / "shards" if self.folder is not None else None

    @property
    def dim(self) -> int | None:
        return self._dim

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: bytes) -> bool:
        return key in self._index

    def _load(self) -> None:
        shard_dir = self.shard_dir
        if shard_dir is None or not shard_dir.is_dir():
            return
        self._sweep_stale(shard_dir)
        shards = []
        for path in sorted(shard_dir.glob("*.npz")):
            shard = self._read_shard(path)
            if shard is not None:
                shards.append((path, *shard))
        width, reason = self._choose_width([vectors for _, _, vectors in shards])
        for path, keys, vectors in shards:
            if vectors.shape[1] != width:
                logger.warning(
                    "Skipping cache shard %s: its vectors are %d wide, the cache's are %d (%s)",
                    path, vectors.shape[1], width, reason,
                )
                self._shelved.setdefault(vectors.shape[1], []).append((keys, vectors))
                continue
            self._insert(keys, vectors)
            self.shards_loaded += 1
        self._dim = width
        logger.debug(
            "Loaded %d cached vectors from %d shards in %s", len(self), self.shards_loaded, shard_dir
        )

    @staticmethod
    def _read_shard(path: Path) -> tuple[list[bytes], np.ndarray] | None:
        """Keys and vectors of one shard file, or ``None`` (with a warning) when it cannot be used."""
        try:
            with np.load(path, allow_pickle=False) as data:
                keys, vectors = data["keys"], data["vectors"]
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - a damaged shard is skipped, never trusted
            logger.warning("Skipping unreadable cache shard %s: %s", path, exc)
            return None
        if (
            keys.ndim != 1
            or keys.dtype != np.dtype("S20")
            or vectors.ndim != 2
            or vectors.dtype != np.float32
            or len(keys) != len(vectors)
            or vectors.shape[1] == 0
            or not np.isfinite(vectors).all()
        ):
            logger.warning("Skipping malformed cache shard %s", path)
            return None
        # numpy's fixed-width bytes drop trailing NUL bytes; a digest may end in some
        return [bytes(k).ljust(_KEY_BYTES, b"\0") for k in keys.tolist()], vectors

    def _choose_width(self, blocks: list[np.ndarray]) -> tuple[int | None, str]:
        """The width the cache trusts, and why: ``encoder.json``'s, else the one most vectors have.

        A wrong choice is undone by `use_width` as soon as the encoder produces vectors.
        """
        rows: Counter = Counter()
        for vectors in blocks:
            rows[vectors.shape[1]] += len(vectors)
        if not rows:
            return None, "no shards"
        recorded = self._recorded_dim()
        if recorded is not None:
            return recorded, "as recorded in encoder.json"
        width = max(rows, key=lambda w: (rows[w], -w))
        return width, f"the width of {rows[width]} of {sum(rows.values())} cached vectors"

    def _recorded_dim(self) -> int | None:
        """The ``dim`` that ``encoder.json`` records, when it is readable."""
        if self.folder is None:
            return None
        try:
            with open(self.folder / "encoder.json", encoding="utf-8") as f:
                dim = json.load(f).get("dim")
        except (OSError, ValueError, AttributeError):
            return None
        return dim if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 else None

    def use_width(self, width: int) -> None:
        """Serve vectors `width` wide from now on (the encoder's width, when it disagrees).

        The vectors in use are set aside and those of `width` skipped at load take their place;
        ``encoder.json`` is rewritten with the next shard.
        """
        if self._dim is None or self._dim == width:
            return
        logger.warning(
            "Cache %s held vectors %d wide but the encoder gives %d: using the shards %d wide",
            self.folder, self._dim, width, width,
        )
        self._shelved.setdefault(self._dim, []).extend(zip(self._block_keys, self._blocks))
        groups = self._shelved.pop(width, [])
        self._index, self._blocks, self._block_keys, self._dim = {}, [], [], None
        self.shards_loaded = 0
        for keys, vectors in groups:
            self._insert(keys, vectors)
            self.shards_loaded += 1
        self._dim = width
        self._meta_dim_wrong = True

    @staticmethod
    def _sweep_stale(shard_dir: Path) -> None:
        """Remove temporaries that hard-killed writers left behind.

        Those of `atomic_path` go as soon as their writer is gone; any other hidden ``.*.tmp``
        in the shard folder once it is a day old.
        """
        sweep_stale_temporaries(shard_dir)
        now = time.time()
        for tmp in shard_dir.glob(".*.tmp"):
            try:
                if now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                    shutil.rmtree(tmp, ignore_errors=True)
            except OSError:
                pass

    def _insert(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        if self._dim is None:
            self._dim = int(vectors.shape[1])
        block = len(self._blocks)
        self._blocks.append(vectors)
        self._block_keys.append(list(keys))
        for row, key in enumerate(keys):
            self._index.setdefault(bytes(key), (block, row))

    def contains(self, keys: Sequence[bytes]) -> np.ndarray:
        """Boolean mask: which `keys` are cached."""
        return np.fromiter((k in self._index for k in keys), dtype=bool, count=len(keys))

    def get(self, keys: Sequence[bytes]) -> np.ndarray:
        """Vectors for `keys` (all must be cached), float32 [len(keys), dim]."""
        if not keys:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        out = np.empty((len(keys), self.dim), dtype=np.float32)
        for i, key in enumerate(keys):
            block, row = self._index[key]
            out[i] = self._blocks[block][row]
        return out

    def add(self, keys: Sequence[bytes], vectors: np.ndarray, *, persist: bool = True) -> Path | None:
        """Add vectors; with a folder and `persist`, write them as one new shard (atomically).

        Returns:
            The shard path when one was written.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys for {len(vectors)} vectors")
        if not len(keys):
            return None
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise ValueError(f"vectors of dim {vectors.shape[1]} for a cache of dim {self.dim}")
        path = None
        if persist and self.shard_dir is not None:
            path = self._write_shard(list(keys), vectors)
        self._insert(list(keys), vectors)
        return path

    def _write_shard(self, keys: list[bytes], vectors: np.ndarray) -> Path:
        key_array = np.asarray(keys, dtype="S20")
        name = hashlib.sha1(key_array.tobytes()).hexdigest()[:20] + ".npz"
        path = self.shard_dir / name
        if not path.exists():
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, keys=key_array, vectors=vectors)
        meta_path = self.folder / "encoder.json"
        if self.meta and (self._meta_dim_wrong or not meta_path.exists()):
            write_json(meta_path, {**self.meta, "dim": int(vectors.shape[1])})
            self._meta_dim_wrong = False
        return path

    def compact(self, max_shards: int = MAX_SHARDS) -> bool:
        """Merge all shards into one when there are more than `max_shards` (single process only).

        The merged shard is written before the old ones are removed, so an interruption leaves
        at worst duplicate (identical) vectors.
        """
        shard_dir = self.shard_dir
        if shard_dir is None or not shard_dir.is_dir():
            return False
        old = sorted(shard_dir.glob("*.npz"))
        if len(old) <= max_shards or not self._index:
            return False
        keys = list(self._index)
        merged = self._write_shard(keys, self.get(keys))
        for path in old:
            if path != merged:
                path.unlink(missing_ok=True)
        logger.info("Compacted %d cache shards into %s", len(old), merged)
        return True


class CachedEncoder:
    """An `Encoder` behind an `EmbeddingCache`: only texts not yet cached are encoded.

    With an `accelerate.PartialState` of several processes, the missing texts are split across
    ranks, gathered back in order, and written by the main process only. Every process must
    call `encode` with the same texts.

    Attributes:
        texts_encoded: Distinct texts encoded so far (cache misses).
        texts_cached: Rows served from the cache without encoding.
        seconds: Time spent in `encode`.
    """

    def __init__(self, encoder: Encoder, cache: EmbeddingCache, *, state=None) -> None:
        self.encoder = encoder
        self.cache = cache
        self.state = state
        self.texts_encoded = 0
        self.texts_cached = 0
        self.seconds = 0.0

    @classmethod
    def create(
        cls,
        encoder: Encoder,
        cache_dir: str | os.PathLike | None | bool = None,
        *,
        state=None,
    ) -> CachedEncoder:
        """Wrap `encoder` with its cache folder under `cache_dir`.

        Args:
            encoder: The encoder (its fingerprint names the folder).
            cache_dir: Root folder; ``None`` for `default_cache_dir`; ``False`` for memory only.
            state: Optional `accelerate.PartialState` for multi-process encoding.
        """
        if cache_dir is False:
            folder = None
        else:
            root = (
                default_cache_dir()
                if cache_dir is None or cache_dir is True
                else Path(cache_dir).expanduser()
            )
            folder = root / encoder_folder_name(encoder)
        meta = {"spec": encoder.spec.canonical, "kind": encoder.kind, "fingerprint": encoder.fingerprint}
        if state is not None and state.num_processes > 1:
            state.wait_for_everyone()
        cache = EmbeddingCache(folder, meta=meta)
        if state is None or state.num_processes <= 1:
            cache.compact()
        return cls(encoder, cache, state=state)

    @property
    def name(self) -> str:
        return self.encoder.name

    @property
    def dim(self) -> int:
        return self.cache.dim or self.encoder.dim

    def encode(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        batch_size: int = 64,
        show_progress: bool = True,
    ) -> np.ndarray:
        """Vectors for `texts`, from the cache or freshly encoded (then cached).

        Args:
            texts: Texts to embed.
            ids: Their ids, used in error messages (default: row numbers).
            batch_size: Encoder batch size.
            show_progress: Show the encoder's progress bar.

        Raises:
            EncoderError: The encoder produced NaN or infinite values; names the encoder and text id.
        """
        start = time.perf_counter()
        texts = list(texts)
        keys = [text_key(t) for t in texts]
        is_main = self.state is None or self.state.is_main_process
        encoded: set[bytes] = set()
        for attempt in range(2):
            rows = self._missing_rows(keys, texts)
            if not rows:
                break
            vectors = self._encode_rows(
                texts, rows, ids=ids, batch_size=batch_size, show_progress=show_progress and is_main
            )
            if attempt == 0 and self.cache.dim not in (None, vectors.shape[1]):
                # the shards the cache trusted disagree with the encoder: the encoder is right,
                # and the texts those shards served are encoded again on the next pass
                self.cache.use_width(vectors.shape[1])
            self.cache.add([keys[i] for i in rows], vectors, persist=is_main)
            encoded.update(keys[i] for i in rows)
        self.texts_encoded += len(encoded)
        self.texts_cached += sum(k not in encoded for k in keys)
        out = self.cache.get(keys) if texts else np.zeros((0, self.dim), dtype=np.float32)
        self.seconds += time.perf_counter() - start
        return out

    def _missing_rows(self, keys: list[bytes], texts: list[str]) -> list[int]:
        """First row of each key not cached, longest text first."""
        missing: dict[bytes, int] = {}
        for i in np.flatnonzero(~self.cache.contains(keys)):
            missing.setdefault(keys[i], int(i))
        return sorted(missing.values(), key=lambda i: -len(texts[i]))

    def _encode_rows(
        self,
        texts: list[str],
        rows: list[int],
        *,
        ids: Sequence[str] | None,
        batch_size: int,
        show_progress: bool,
    ) -> np.ndarray:
        """Encode ``texts[rows]`` (split across processes), refusing NaN or infinite values."""
        vectors = encode_sharded(
            lambda batch: self.encoder.encode(batch, batch_size=batch_size, show_progress=show_progress),
            [texts[i] for i in rows],
            self.state,
            block_size=batch_size,
        )
        bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        if len(bad):
            first = rows[int(bad[0])]
            text_id = ids[first] if ids is not None else str(first)
            more = f" (and {len(bad) - 1} more texts)" if len(bad) > 1 else ""
            preview = texts[first][:80]
            raise EncoderError(
                f"encoder {self.name!r} produced NaN/infinite values for text id {text_id!r}{more}: "
                f"{preview!r}"
            )
        return vectors
