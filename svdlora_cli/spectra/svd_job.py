"""The SVD job: decompose targets' dW into the cache, with a cost model to balance ranks."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from ..distributed import Launch
from ..models.checkpoints import ModelPair, TensorReader
from ..models.targets import Target
from ..store.cache import ArtifactCache, tensor_key
from .decompose import GAP_TOLERANCE, Decomposition, decompose, resolve_method
from .delta import Progress, stats_key, target_delta
from .dtype_policy import DEFAULT_DTYPE_POLICY


def svd_key(
    pair: ModelPair,
    target: Target,
    method: str,
    oversample: int | None,
    power_iters: int,
    seed: int,
    dtype_policy: str = DEFAULT_DTYPE_POLICY,
) -> str:
    """Content key of one target's decomposition under the given method parameters."""
    params: dict = {"method": method, "dtype_policy": dtype_policy}
    if method == "randomized":  # certified to GAP_TOLERANCE (older entries were not)
        params.update(
            oversample=oversample,
            power_iters=power_iters,
            seed=seed,
            tolerance=GAP_TOLERANCE,
            iterations_on="gram",  # power iterations on the Gram matrix (other factor bits)
        )
    return tensor_key("svd", pair.fingerprints(), target.tensor, **params)


def prefetched(
    pair: ModelPair, names: Sequence[str]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Tensor pairs in order, the next one read by a background thread while this one is used.

    Reading (safetensors, mostly I/O and memcpy) overlaps the SVD (torch kernels release
    the GIL); only the reader thread touches the shard handles, and at most two pairs live.
    """
    if not names:
        return
    with (
        ThreadPoolExecutor(max_workers=1) as pool,
        TensorReader(pair.base) as b,
        TensorReader(pair.tuned) as t,
    ):
        future = pool.submit(lambda n=names[0]: (b.get(n), t.get(n)))
        for following in [*names[1:], None]:
            current = future.result()
            if following is not None:
                future = pool.submit(lambda n=following: (b.get(n), t.get(n)))
            yield current


# Reading two bf16 matrices and forming dW costs about this many flops per element of
# compute time on a CPU (memory bound); it keeps small matrices from looking free.
READ_COST_PER_ELEMENT = 100.0


@dataclass(frozen=True)
class SvdItem:
    """One target to decompose: its method, number of factors and cache keys (the first is
    where the result goes; none yet while the pair's fingerprints are being hashed)."""

    target: Target
    method: str
    k: int
    keys: tuple[str, ...] = ()
    fallback: bool = False  # `auto`: an uncertified randomized result becomes exact

    @property
    def key(self) -> str:
        return self.keys[0]

    def cost(self, oversample: int | None, power_iters: int) -> float:
        """Estimated flops of reading and decomposing, to balance ranks (not a timing)."""
        m, n = self.target.shape
        small = min(m, n)
        read = READ_COST_PER_ELEMENT * m * n
        if self.method == "exact":  # LAPACK gesdd with thin singular vectors
            return read + 4.0 * m * n * small + 8.0 * small**3
        q = min(small, self.k + (max(8, self.k // 2) if oversample is None else oversample))
        return read + 2.0 * m * n * q * (2 * power_iters + 2)


@dataclass
class SvdLookup:
    """Targets' decompositions in the cache, by content key (which needs the pair's
    fingerprints); records per tensor the keys tried, the one used and whether it hit."""

    pair: ModelPair
    cache: ArtifactCache
    method: str
    oversample: int | None
    power_iters: int
    seed: int
    dtype_policy: str = DEFAULT_DTYPE_POLICY
    sources: dict[str, dict] = field(default_factory=dict)
    hit: dict[str, bool] = field(default_factory=dict)

    def item(self, target: Target, k: int) -> SvdItem:
        """The target's item, without keys."""
        resolved = resolve_method(self.method, target.shape, k)
        return SvdItem(target, resolved, k, fallback=self.method == "auto")

    def keyed(self, item: SvdItem) -> SvdItem:
        """The item with its keys (waits for the fingerprints)."""
        # An exact decomposition already cached serves an `auto` request too.
        tried = (
            [item.method, "exact"] if item.fallback and item.method != "exact" else [item.method]
        )
        params = (self.oversample, self.power_iters, self.seed, self.dtype_policy)
        keys = tuple(svd_key(self.pair, item.target, m, *params) for m in tried)
        self.sources[item.target.tensor] = {"keys": list(keys), "key": keys[0], "k": item.k}
        self.hit[item.target.tensor] = False
        return dataclasses.replace(item, keys=keys)

    def find(self, item: SvdItem) -> tuple[SvdItem, Decomposition | None]:
        """The keyed item and its cached decomposition, if any key has one."""
        item = self.keyed(item)
        for key in item.keys:
            dec = self.cache.peek_decomposition(key, item.k)
            if dec is not None:
                self.sources[item.target.tensor]["key"] = key
                self.hit[item.target.tensor] = True
                return item, dec
        return item, None


@dataclass
class SvdJob:
    """Decomposes items in order (the next pair read meanwhile) into the cache."""

    pair: ModelPair
    cache: ArtifactCache
    device: torch.device
    oversample: int | None
    power_iters: int
    seed: int
    stats: dict[str, dict] = field(default_factory=dict)
    dtype_policy: str = DEFAULT_DTYPE_POLICY

    def run(
        self,
        items: Sequence[SvdItem],
        progress: Progress | None,
        lookup: SvdLookup,
        skip: Callable[[str], bool] | None = None,
    ) -> dict[str, Decomposition]:
        """Decompositions by tensor name; an item `skip` names by then is left out.

        Items without keys (their pair was still being hashed) are decomposed at once;
        once the fingerprints are known, `lookup` finds the rest in the cache, and the
        results computed before then are stored under their keys.
        """
        decs: dict[str, Decomposition] = {}
        held: list[tuple[SvdItem, Decomposition, float]] = []  # waiting for their keys
        names = [item.target.tensor for item in items]
        pairs = prefetched(self.pair, names)
        for i, (item, (base, tuned)) in enumerate(zip(items, pairs, strict=True)):
            target = item.target
            if progress:
                progress(target.tensor, i + 1, len(items))
            if skip is not None and skip(target.tensor):
                continue
            if not item.keys and self.pair.fingerprints_ready():
                self._store_held(held, lookup)
                item, found = lookup.find(item)
                if found is not None:
                    decs[target.tensor] = found
                    continue
            # On a GPU, dW and its statistics are formed there too (the CPU would be the
            # bottleneck); the prefetch thread reads the next pair meanwhile.
            start = time.perf_counter()
            base, tuned = base.to(self.device), tuned.to(self.device)
            dw, self.stats[target.tensor] = target_delta(
                target.tensor, base, tuned, target.transposed, self.dtype_policy
            )
            del base, tuned
            dec = decompose(
                dw,
                item.k,
                fro_sq=self.stats[target.tensor]["delta_sq"],
                method="auto" if item.fallback else item.method,
                oversample=self.oversample,
                power_iters=self.power_iters,
                seed=self.seed,
            )
            del dw
            decs[target.tensor] = dec
            seconds = time.perf_counter() - start
            if item.keys:
                self._store(item, dec, seconds)
            else:
                held.append((item, dec, seconds))
        self._store_held(held, lookup)
        return decs

    def _store_held(
        self, held: list[tuple[SvdItem, Decomposition, float]], lookup: SvdLookup
    ) -> None:
        """Store the results that waited for their keys (waits for the fingerprints)."""
        for item, dec, seconds in held:
            self._store(lookup.keyed(item), dec, seconds)
        held.clear()

    def _store(self, item: SvdItem, dec: Decomposition, seconds: float) -> None:
        """A result and its tensor's statistics into the cache."""
        pair, tensor = self.pair, item.target.tensor
        self.cache.put_json(
            stats_key(pair, tensor, self.dtype_policy), self.stats[tensor], tensor=tensor
        )
        self.cache.put_decomposition(
            item.key,
            dec,
            tensor=tensor,
            shape=list(item.target.shape),
            base=pair.base_fingerprint,
            tuned=pair.tuned_fingerprint,
            rank=Launch.from_env().rank,  # who computed it, and how long it took
            seconds=round(seconds, 4),
        )
