"""Every exit's probabilities, per example, per tier input: computed once, cached on disk.

A cascade's outcome for one request depends on thresholds only through comparisons with the
exits' confidences, provided each tier's inputs are fixed. They are, because the exit
threshold of a lower tier is tied to its offload threshold (the paper: "a request that cannot
exit early in a lower model is the one to offload"): a request that is offloaded always ran to
the lower tier's LAST layer, so the importance that prunes it comes from that layer and the
upper tier's input depends on the keep ratio alone. So one pass per (variant, keep ratio)
gives tables from which any threshold setting is replayed exactly (``simulate``).

Inputs go through the serving path's own preparation (``VariantRunner.prepare``: same
tokenisation, truncation and id validation as Triton's model.py) and the router's own pruning
(``router.policy.prune``), so the table holds what the live cascade would compute.

The tables themselves (``table_set``) are plain data: replaying them (``simulate``) and
calibrating on them never load a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tierplace import paths
from tierplace.api.variants import VARIANTS
from tierplace.evaluation.table_set import FloatArray, IntArray, TableSet, TierTable, source_key
from tierplace.model.data import VALIDATION_TENTHS, Split, load_reviews, recorded_tenths
from tierplace.model.domains import SOURCE, Domain, load_domain
from tierplace.router.policy import TierInput, prune, sent_up

log = logging.getLogger(__name__)

#: Keep ratios a table set covers; the InferenceCascade has one keep ratio for all tiers.
DEFAULT_KEEP_RATIOS: tuple[float, ...] = (1.0, 0.8, 0.6)

#: Bumped whenever what a table holds changes; old cache files are then ignored.
TABLE_FORMAT = 1

#: Called for every split read; tests hook it to prove calibration never reads ``test``.
SPLIT_READS: list[Split] = []


def trained_validation_tenths(variants: Sequence[str] = tuple(VARIANTS)) -> int:
    """The calibration share (``model.data``) the trained variants in ``paths.models_dir()``
    held out. They must agree: rows one tier trained on would make its answers there look
    better than they are, and a threshold certified on them would promise what test misses."""
    shares: dict[str, int] = {}
    for variant in variants:
        meta = paths.models_dir() / variant / "tierplace.json"
        if meta.exists():
            shares[variant] = recorded_tenths(json.loads(meta.read_text()).get("training", {}))
    if len(set(shares.values())) > 1:
        raise ValueError(
            f"the variants in {paths.models_dir()} were trained on different splits "
            f"(validation tenths {shares}); retrain them with one --validation-tenths"
        )
    return next(iter(shares.values()), VALIDATION_TENTHS)


def read_split(split: Split) -> tuple[list[str], IntArray]:
    """Texts and labels of one split, as the trained variants split the corpus
    (``trained_validation_tenths``); every read is recorded in ``SPLIT_READS``."""
    SPLIT_READS.append(split)
    rows = load_reviews(split, trained_validation_tenths())
    return [r.text for r in rows], np.asarray([r.label for r in rows], dtype=np.int64)


def read_domain(domain: Domain, limit: int | None = None) -> tuple[list[str], IntArray]:
    """Texts and labels of one off-domain set (``model.domains``), capped to ``limit``."""
    rows = load_domain(domain, limit)
    return [r.text for r in rows], np.asarray([r.label for r in rows], dtype=np.int64)


def domain_key(domain: str, texts: Sequence[str], labels: IntArray) -> str:
    """The cache name of an off-domain set's rows: the package the text came from, the set,
    and a digest of the texts and labels (a new labelling rule or cap gets new tables)."""
    h = hashlib.sha1()
    for text, label in zip(texts, labels.tolist(), strict=True):
        h.update(f"{label}\t{text}\n".encode())
    return f"{SOURCE}.{domain}.{h.hexdigest()[:10]}"


def _cache_dir() -> Path:
    return paths.home() / "eval" / "tables"


def fingerprint(variant: str) -> str:
    """Changes when the variant's weights are retrained: the cache never serves stale tables."""
    meta = paths.models_dir() / variant / "tierplace.json"
    exits = paths.models_dir() / variant / "exits.safetensors"
    h = hashlib.sha1(meta.read_bytes())
    if exits.exists():
        h.update(str(exits.stat().st_mtime_ns).encode())
    return h.hexdigest()[:12]


def _cache_path(variant: str, rows: str, source: str, n: int, sends: str) -> Path:
    """One file per table; ``rows`` names the examples (a review split, or ``domain_key``),
    ``sends`` the pruned inputs it holds for the next tier."""
    name = f"{variant}-{fingerprint(variant)}-{rows}-{n}-{source}-{sends}-v{TABLE_FORMAT}"
    return _cache_dir() / f"{name}.npz"


def _save(path: Path, table: TierTable, payloads: dict[float, list[TierInput]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        probs=table.probs,
        num_tokens=table.num_tokens,
        in_bytes=table.in_bytes,
        payloads=np.asarray(
            json.dumps(
                {
                    f"{k:g}": [[p.text, list(p.input_ids or [])] for p in v]
                    for k, v in payloads.items()
                }
            )
        ),
    )
    tmp.rename(path)


def _load(path: Path, variant: str, source: str) -> tuple[TierTable, dict[float, list[TierInput]]]:
    with np.load(path) as data:
        table = TierTable(
            variant,
            source,
            data["probs"].astype(np.float32),
            data["num_tokens"].astype(np.int64),
            data["in_bytes"].astype(np.int64),
        )
        raw: dict[str, list[list[Any]]] = json.loads(str(data["payloads"]))
    payloads = {
        float(k): [
            TierInput(text=t) if t is not None else TierInput(input_ids=tuple(ids)) for t, ids in v
        ]
        for k, v in raw.items()
    }
    return table, payloads


class _Runner:
    """One loaded variant: runs inputs exactly as its Triton model would, to the last layer."""

    def __init__(self, variant: str, threads: int | None = None) -> None:
        import torch

        from tierplace.model import artifacts
        from tierplace.model.serving import VariantRunner

        if threads:
            torch.set_num_threads(threads)
        self.variant = variant
        self.runner = VariantRunner(artifacts.load(paths.models_dir() / variant))
        self.family = VARIANTS[variant].tokenizer if variant in VARIANTS else variant

    def prepared_ids(self, inputs: Sequence[TierInput]) -> list[list[int]]:
        from tierplace.model.serving import TierRequest

        out: list[list[int]] = []
        for inp in inputs:
            if inp.input_ids is not None:
                req = TierRequest(input_ids=np.asarray([inp.input_ids], dtype=np.int64))
            else:
                req = TierRequest(text=[(inp.text or "").encode("utf-8")])
            out.extend(self.runner.prepare(req).ids)
        return out

    def run(
        self, ids: list[list[int]], batch: int = 32, on_batch: Callable[[int], None] | None = None
    ) -> tuple[FloatArray, list[npt.NDArray[np.float32]]]:
        """Every exit's probabilities and the last layer's [CLS] importance, per row."""
        import torch

        model = self.runner.model
        bb = model.backbone
        pad = int(self.runner.tokenizer.pad_token_id or 0)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        n_exits = model.num_layers
        probs = np.zeros((len(ids), n_exits, model.num_labels), dtype=np.float32)
        importance: list[npt.NDArray[np.float32]] = [np.zeros(0, np.float32)] * len(ids)
        with torch.inference_mode():
            for start in range(0, len(order), batch):
                rows = order[start : start + batch]
                width = max(len(ids[r]) for r in rows)
                t_ids = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for j, r in enumerate(rows):
                    t_ids[j, : len(ids[r])] = torch.tensor(ids[r])
                    mask[j, : len(ids[r])] = 1
                hidden, inp = bb.embed(t_ids, mask)
                hidden_in = hidden
                for i, head in enumerate(model.exits):
                    hidden_in = hidden
                    hidden = bb.layer(i, hidden, inp)
                    p = torch.softmax(head(hidden, inp.mask), dim=-1).float().numpy()
                    probs[rows, i] = p
                imp = bb.cls_attention(n_exits - 1, hidden_in, inp).float().numpy()
                for j, r in enumerate(rows):
                    importance[r] = imp[j, : len(ids[r])].astype(np.float32)
                if on_batch is not None:
                    on_batch(len(rows))
        return probs, importance

    def tokens(self, ids: Sequence[int]) -> list[str]:
        names = self.runner.tokenizer.convert_ids_to_tokens(list(ids))
        return [names] if isinstance(names, str) else list(names)


def _pruned(
    lower: _Runner,
    upper_family: str,
    ids: list[list[int]],
    importance: list[Any],
    keep: float,
    originals: Sequence[TierInput],
) -> list[TierInput]:
    """What the router sends up for each row (``CascadeRuntime._next_input``)."""
    if keep >= 1.0:
        return list(originals)
    out: list[TierInput] = []
    for seq, imp, original in zip(ids, importance, originals, strict=True):
        p = prune(
            lower.tokens(seq),
            seq,
            [float(x) for x in imp],
            keep,
            same_family=lower.family == upper_family,
        )
        out.append(sent_up(p, original.text or ""))
    return out


def build_tables(
    variants: Sequence[str],
    split: Split,
    keep_ratios: Sequence[float] = DEFAULT_KEEP_RATIOS,
    limit: int | None = None,
    progress: bool = False,
) -> TableSet:
    """Tables for a cascade ``variants`` (lowest first) at every keep ratio, plus every
    variant fed the original text (the single-tier and no-pruning systems).

    The same keep ratio applies at every tier boundary (the InferenceCascade's one
    ``keepRatio``). Cached under ``$TIERPLACE_HOME/eval/tables``; a retrained variant gets new
    tables.
    """
    texts, labels = read_split(split)
    if limit is not None:
        texts, labels = texts[:limit], labels[:limit]
    return _build(variants, split, split, texts, labels, keep_ratios, progress)


def build_domain_tables(
    variants: Sequence[str],
    domain: Domain,
    keep_ratios: Sequence[float] = DEFAULT_KEEP_RATIOS,
    limit: int | None = None,
    progress: bool = False,
) -> TableSet:
    """``build_tables`` for an off-domain set (``model.domains``) instead of a review split:
    the ``TableSet``'s ``split`` is the domain's name, its cache files are keyed by
    ``domain_key`` (the source package, the set, its rows), and no split is read."""
    texts, labels = read_domain(domain, limit)
    key = domain_key(domain, texts, labels)
    return _build(variants, domain, key, texts, labels, keep_ratios, progress)


def _build(
    variants: Sequence[str],
    name: str,
    rows: str,
    texts: list[str],
    labels: IntArray,
    keep_ratios: Sequence[float],
    progress: bool,
) -> TableSet:
    """Every table of ``_chains`` over ``texts``, from the cache (``rows`` names them) or run."""
    n = len(texts)
    originals = [TierInput(text=t) for t in texts]
    tables: dict[tuple[str, str], TierTable] = {}
    bar = _bar(progress, name)
    runners: dict[str, _Runner] = {}
    # inputs[(tier index, source)] -> what that tier receives
    inputs: dict[tuple[int, str], list[TierInput]] = {
        (i, "text"): originals for i in range(len(variants))
    }
    for i, source, chain_keep in _chains(variants, keep_ratios):
        variant = variants[i]
        nxt = variants[i + 1] if i + 1 < len(variants) else None
        sends = [
            k
            for k in keep_ratios
            if nxt is not None and k < 1.0 and (chain_keep == k if chain_keep else i == 0)
        ]
        to = f"to-{nxt}@" + ",".join(f"{k:g}" for k in sends) if sends else "top"
        path = _cache_path(variant, rows, source, n, to)
        if path.exists():
            table, payloads = _load(path, variant, source)
        else:
            if variant not in runners:
                runners[variant] = _Runner(variant)
            table, payloads = _run_table(
                runners[variant], source, inputs[(i, source)], nxt, sends, originals, bar
            )
            _save(path, table, payloads)
        tables[(variant, source)] = table
        for k, sent in payloads.items():
            inputs[(i + 1, source_key([(v, k) for v in variants[: i + 1]]))] = sent
    return TableSet(name, labels, tables)


def _chains(
    variants: Sequence[str], keep_ratios: Sequence[float]
) -> list[tuple[int, str, float | None]]:
    """Every (tier, source, keep ratio of its chain) a table is needed for: each tier on the
    original text, and each upper tier on what the tiers below sent at one keep ratio."""
    chains: list[tuple[int, str, float | None]] = []
    for i in range(len(variants)):
        chains.append((i, "text", None))
        if i > 0:
            for k in keep_ratios:
                if k < 1.0:
                    chains.append((i, source_key([(v, k) for v in variants[:i]]), k))
    return chains


def _run_table(
    r: _Runner,
    source: str,
    feed: list[TierInput],
    nxt: str | None,
    sends: Sequence[float],
    originals: list[TierInput],
    bar: Callable[[str, int], Callable[[int], None] | None],
) -> tuple[TierTable, dict[float, list[TierInput]]]:
    """One variant over its inputs: every exit's probabilities, and the pruned inputs it
    sends the next tier at each keep ratio of ``sends``."""
    n = len(feed)
    ids = r.prepared_ids(feed)
    started = time.perf_counter()
    probs, importance = r.run(ids, on_batch=bar(f"{r.variant}@{source}", n))
    log.info("%s@%s: %d rows in %.1f s", r.variant, source, n, time.perf_counter() - started)
    table = TierTable(
        r.variant,
        source,
        probs,
        np.asarray([len(s) for s in ids], dtype=np.int64),
        np.asarray([x.nbytes for x in feed], dtype=np.int64),
    )
    payloads: dict[float, list[TierInput]] = {}
    if nxt is not None:
        upper_family = VARIANTS[nxt].tokenizer if nxt in VARIANTS else nxt
        # Only the chains this input continues: one keep ratio at every boundary.
        for k in sends:
            payloads[k] = _pruned(r, upper_family, ids, importance, k, originals)
    return table, payloads


def _bar(enabled: bool, split: str) -> Callable[[str, int], Callable[[int], None] | None]:
    def make(name: str, total: int) -> Callable[[int], None] | None:
        if not enabled:
            return None
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"{split} {name}", unit="row", leave=False)

        def step(k: int) -> None:
            bar.update(k)
            if bar.n >= total:
                bar.close()

        return step

    return make
