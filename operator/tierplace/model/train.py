"""Fine-tune one variant of the early-exit family on the review sentences.

The default schedule is DeeBERT's two stages: fine-tune the backbone with the final exit, then
freeze it and train the earlier exits on cached pooled features (cheap: one forward pass over
the data instead of one per exit and epoch). ``joint`` trains every exit with the backbone at
once, which lifts early exits at a small cost to the final one.

With a ``teacher`` (a variant trained first, in practice the cloud's), every exit also learns
the teacher's softened probabilities (Hinton-style distillation). In a cascade what matters is
not only a lower tier's accuracy but that it is sure where the upper tier would agree with it:
distillation moves the lower tiers' confidence toward the cloud's judgement, so the requests
they keep are the ones the cloud would have answered the same way.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from tierplace.api.variants import LABELS, VARIANTS
from tierplace.model import artifacts, encoders
from tierplace.model.data import VALIDATION_TENTHS, Example, load_reviews, recorded_tenths
from tierplace.model.early_exit import EarlyExitClassifier
from tierplace.model.profiles import FULL, QUICK, Profile

log = logging.getLogger(__name__)

Schedule = Literal["two-stage", "joint"]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    lr: float = 5e-5
    head_lr: float = 1e-3
    head_epochs: int = 30
    batch_size: int = 32
    max_length: int = 64
    seed: int = 13
    schedule: Schedule = "two-stage"
    # The word-embedding table is most of a small model's parameters; updating it costs more
    # optimiser time than the layers and buys little on 10k sentences.
    freeze_embeddings: bool = True
    frozen_layers: int = 0  # lowest layers kept at their pretrained weights
    limit: int | None = None  # first N training rows only (smoke runs, tests)
    head_rows: int | None = None  # exit heads learn from the first N rows' features only
    teacher: str | None = None  # a trained variant whose final exit every exit learns from
    distill_weight: float = 0.5  # share of the loss that follows the teacher
    distill_temperature: float = 2.0
    # Cascade-aware training: the weight of the label loss on rows the teacher gets wrong
    # (1: plain distillation). A lower tier's wrong answer harms only where the cloud is
    # right, so rows the cloud gets wrong spend the small model's capacity on nothing the
    # cascade can gain (after Wang et al., "Cascade-aware training of language models", 2024).
    cascade_weight: float = 1.0
    # Tenths of the corpus held out to calibrate on (``model.data``); recorded in the metadata
    # so that calibration reads the rows this variant never trained on.
    validation_tenths: int = VALIDATION_TENTHS

    @property
    def profile(self) -> Profile:
        """``quick`` when the encoder stays as packaged (no fine-tuning epoch), else ``full``."""
        return QUICK if self.epochs == 0 else FULL


#: Per-variant defaults, chosen to fit 2 CPU cores: the cloud variant gets fewer epochs; the
#: lower tiers learn from it (see docs/models.md for what distillation bought).
DEFAULTS: dict[str, TrainConfig] = {
    "minilm-l2": TrainConfig(epochs=4, lr=8e-5, teacher="mpnet-base"),
    "minilm-l6": TrainConfig(epochs=3, lr=5e-5, teacher="mpnet-base"),
    # 110 M parameters on 2 cores: one epoch over the top 4 layers, exit heads on 4k rows.
    "mpnet-base": TrainConfig(epochs=1, lr=5e-5, frozen_layers=8, head_rows=4000),
}


#: The quick profile: the packaged encoders unchanged, every exit head trained on their frozen
#: features (one forward pass over the data per variant). Minutes instead of an hour, so that
#: ``tierplace up`` answers early; the full profile replaces it without a restart
#: (``local.upgrade``). No teacher: distilling from a quick cloud variant would teach its
#: mistakes.
QUICK_DEFAULTS: dict[str, TrainConfig] = {
    name: TrainConfig(
        epochs=0,
        head_epochs=20,
        teacher=None,
        # The cloud encoder's forward pass is most of the quick profile's time: its heads
        # learn from 4,000 rows, as in the full profile.
        head_rows=4000 if name == "mpnet-base" else None,
    )
    for name in DEFAULTS
}


def training_order(names: Sequence[str], configs: dict[str, TrainConfig]) -> list[str]:
    """``names`` with every teacher before its students (teachers not in ``names`` are
    expected to be trained already)."""
    done: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in path:
            raise ValueError(f"teacher cycle: {' -> '.join((*path, name))}")
        teacher = configs[name].teacher
        if teacher is not None and teacher in names:
            visit(teacher, (*path, name))
        done.append(name)

    for n in names:
        visit(n, ())
    return done


def with_teacher(defaults: dict[str, TrainConfig], teacher: str | None) -> dict[str, TrainConfig]:
    """The per-variant configs with ``teacher`` (a variant name, or "none") replacing the
    catalogue's choice; a variant never learns from itself."""
    if teacher is None:
        return dict(defaults)
    wanted = None if teacher == "none" else teacher
    return {
        name: replace(cfg, teacher=None if name == wanted else wanted)
        for name, cfg in defaults.items()
    }


@dataclass
class Encoded:
    ids: list[list[int]]
    labels: list[int]
    teacher_logits: torch.Tensor | None = None  # [N, C], row-aligned with ids

    def head(self, rows: int) -> Encoded:
        t = self.teacher_logits
        return Encoded(self.ids[:rows], self.labels[:rows], None if t is None else t[:rows])


def encode(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Example], max_length: int) -> Encoded:
    out = tokenizer([r.text for r in rows], truncation=True, max_length=max_length)
    return Encoded(list(out["input_ids"]), [r.label for r in rows])


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def batches(data: Encoded, size: int, pad_id: int, rng: random.Random | None) -> Iterator[Batch]:
    """Length-bucketed batches of (ids, mask, labels, row indices): on a CPU, padding is most
    of the wasted work."""
    order = list(range(len(data.ids)))
    if rng is not None:
        rng.shuffle(order)
    chunk = size * 50
    groups: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: len(data.ids[i]))
        groups += [part[i : i + size] for i in range(0, len(part), size)]
    if rng is not None:
        rng.shuffle(groups)
    for group in groups:
        width = max(len(data.ids[i]) for i in group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, i in enumerate(group):
            seq = data.ids[i]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        yield ids, mask, torch.tensor([data.labels[i] for i in group]), torch.tensor(group)


class Loss:
    """Cross-entropy on the labels, mixed with distillation when the data has a teacher; with
    ``cascade_weight`` below 1, rows the teacher gets wrong weigh less in the label part."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.weight = cfg.distill_weight
        self.t = cfg.distill_temperature
        self.cascade_weight = cfg.cascade_weight
        self.ce = nn.CrossEntropyLoss(reduction="none")

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None
    ) -> torch.Tensor:
        per_row: torch.Tensor = self.ce(logits, labels)
        if teacher is not None and self.cascade_weight != 1.0:
            right = teacher.argmax(dim=-1) == labels
            w = torch.where(right, 1.0, self.cascade_weight).to(per_row.dtype)
            hard = (w * per_row).sum() / w.sum().clamp_min(1e-12)
        else:
            hard = per_row.mean()
        if teacher is None or self.weight <= 0:
            return hard
        soft: torch.Tensor = nn.functional.kl_div(
            nn.functional.log_softmax(logits / self.t, dim=-1),
            nn.functional.log_softmax(teacher / self.t, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        return (1 - self.weight) * hard + self.weight * self.t * self.t * soft


def _teacher(data: Encoded, rows: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    return None if data.teacher_logits is None else data.teacher_logits[rows].to(device)


_TEACHER_MEMO: dict[tuple[str, int], torch.Tensor] = {}


@torch.inference_mode()
def teacher_logits(directory: Path, rows: Sequence[Example], batch_size: int = 64) -> torch.Tensor:
    """The trained variant in ``directory``: its final exit's logits for ``rows``, computed
    with its own tokenizer (teacher and student need not share a vocabulary)."""
    loaded = artifacts.load(directory)
    data = encode(loaded.tokenizer, rows, loaded.meta.max_length)
    pad = int(loaded.tokenizer.pad_token_id or 0)
    out = torch.zeros((len(rows), loaded.model.num_labels))
    bar = tqdm(total=_n_batches(data, batch_size), desc="teacher", unit="batch", disable=None)
    for ids, mask, _, idx in batches(data, batch_size, pad, None):
        out[idx] = loaded.model(ids, mask)[-1].float()
        bar.update()
    bar.close()
    return out


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _n_batches(data: Encoded, size: int) -> int:
    return (len(data.ids) + size - 1) // size


def finetune(
    model: EarlyExitClassifier,
    data: Encoded,
    cfg: TrainConfig,
    pad_id: int,
    device: torch.device,
    progress: bool,
) -> None:
    """Stage 1 (or the whole joint schedule): backbone and exits under one optimiser."""
    rng = random.Random(cfg.seed)
    final = model.num_layers - 1
    backbone = model.backbone
    if cfg.freeze_embeddings or cfg.frozen_layers:
        backbone.word_embeddings().weight.requires_grad_(False)
    for i, layer in enumerate(backbone.layers()):
        layer.requires_grad_(i >= cfg.frozen_layers)
    params = [p for p in backbone.parameters() if p.requires_grad]
    heads = model.exits if cfg.schedule == "joint" else [model.exits[final]]
    for head in heads:
        params += list(head.parameters())
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    total = cfg.epochs * _n_batches(data, cfg.batch_size)
    warmup = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    # Joint: later exits weigh more (their layers serve every earlier exit's gradient too).
    weights = [float(i + 1) for i in range(model.num_layers)]
    loss_fn = Loss(cfg)
    model.train()
    bar = tqdm(total=total, desc="fine-tune", unit="batch", disable=not progress)
    for epoch in range(cfg.epochs):
        for ids, mask, labels, rows in batches(data, cfg.batch_size, pad_id, rng):
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            teacher = _teacher(data, rows, device)
            logits = model(ids, mask, cfg.frozen_layers)
            if cfg.schedule == "joint":
                terms = [
                    w * loss_fn(lg, labels, teacher) for w, lg in zip(weights, logits, strict=True)
                ]
                loss = torch.stack(terms).sum() / sum(weights)
            else:
                loss = loss_fn(logits[final], labels, teacher)
            optim.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
            sched.step()
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.detach().item():.3f}")
    bar.close()
    model.eval()


def _eval_batches(data: Encoded, cfg: TrainConfig, pad_id: int, desc: str) -> Iterator[Batch]:
    """Unshuffled, doubled batches (no gradients to hold), with a bar on a terminal."""
    size = cfg.batch_size * 2
    yield from tqdm(
        batches(data, size, pad_id, None),
        total=_n_batches(data, size),
        desc=desc,
        unit="batch",
        disable=None,
    )


@torch.inference_mode()
def pooled(
    model: EarlyExitClassifier, data: Encoded, cfg: TrainConfig, pad_id: int, device: torch.device
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """Every layer's pooled features, the labels and the teacher's logits, row-aligned."""
    feats: list[list[torch.Tensor]] = [[] for _ in range(model.num_layers)]
    labels: list[torch.Tensor] = []
    order: list[torch.Tensor] = []
    for ids, mask, y, rows in _eval_batches(data, cfg, pad_id, "features"):
        for layer, f in enumerate(model.pooled_features(ids.to(device), mask.to(device))):
            feats[layer].append(f.float().cpu())
        labels.append(y)
        order.append(rows)
    t = data.teacher_logits
    teacher = None if t is None else t[torch.cat(order)]
    return [torch.cat(f) for f in feats], torch.cat(labels), teacher


def train_exit_heads(
    model: EarlyExitClassifier,
    feats: list[torch.Tensor],
    labels: torch.Tensor,
    cfg: TrainConfig,
    progress: bool,
    teacher: torch.Tensor | None = None,
    layers: int | None = None,
) -> None:
    """Stage 2: the first ``layers`` exits (default: all but the last, which was trained with
    the backbone), on features of the frozen backbone."""
    gen = torch.Generator().manual_seed(cfg.seed)
    loss_fn = Loss(cfg)
    todo = range(model.num_layers - 1 if layers is None else layers)
    for layer in tqdm(todo, desc="exit heads", unit="exit", disable=not progress):
        head = model.exits[layer]
        # The head pools internally; feed pooled features through its MLP directly.
        net = head.net.cpu()
        optim = torch.optim.AdamW(net.parameters(), lr=cfg.head_lr, weight_decay=0.01)
        x = feats[layer]
        net.train()
        for _ in range(cfg.head_epochs):
            perm = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), 256):
                idx = perm[start : start + 256]
                loss = loss_fn(net(x[idx]), labels[idx], None if teacher is None else teacher[idx])
                optim.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optim.step()
        net.eval()


@torch.inference_mode()
def exit_accuracy(
    model: EarlyExitClassifier, data: Encoded, cfg: TrainConfig, pad_id: int, device: torch.device
) -> list[float]:
    correct = [0] * model.num_layers
    for ids, mask, labels, _ in _eval_batches(data, cfg, pad_id, "validate"):
        for layer, logits in enumerate(model(ids.to(device), mask.to(device))):
            correct[layer] += int((logits.argmax(-1).cpu() == labels).sum())
    return [round(c / len(data.labels), 4) for c in correct]


def _distillation(
    variant: str, cfg: TrainConfig, out_dir: Path, train: Encoded, train_rows: list[Example]
) -> TrainConfig:
    """Give ``train`` its teacher's logits when ``cfg`` names a teacher trained in
    ``out_dir``'s parent; a missing teacher is warned about and dropped from the returned
    config (the metadata must not claim a distillation that did not happen)."""
    teacher_dir = out_dir.parent / cfg.teacher if cfg.teacher else None
    if teacher_dir is not None and not (teacher_dir / artifacts.METADATA).exists():
        log.warning(
            "%s: teacher %s is not trained in %s; training without distillation "
            "(train the teacher first, or pass --teacher none)",
            variant,
            cfg.teacher,
            out_dir.parent,
        )
        cfg, teacher_dir = replace(cfg, teacher=None), None
    if teacher_dir is not None:
        _check_same_split(variant, cfg, teacher_dir)
        log.info("%s: distilling from %s (%s)", variant, cfg.teacher, teacher_dir)
        key = (str(teacher_dir.resolve()), len(train_rows))
        if key not in _TEACHER_MEMO:  # `train --variant all` distils two students from one
            _TEACHER_MEMO[key] = teacher_logits(teacher_dir, train_rows)
        train.teacher_logits = _TEACHER_MEMO[key]
    return cfg


def _check_same_split(variant: str, cfg: TrainConfig, teacher_dir: Path) -> None:
    """A teacher trained on this variant's validation rows would carry them into the cascade
    that is calibrated there: refuse before an hour of training, not at calibration."""
    theirs = recorded_tenths(artifacts.VariantMetadata.read(teacher_dir).training)
    if theirs != cfg.validation_tenths:
        raise ValueError(
            f"{variant}: teacher {cfg.teacher} in {teacher_dir} held out {theirs} validation "
            f"tenths, this variant {cfg.validation_tenths}; retrain the teacher with "
            f"--validation-tenths {cfg.validation_tenths}, or pass --teacher none"
        )


def _fit(
    model: EarlyExitClassifier,
    train: Encoded,
    cfg: TrainConfig,
    pad_id: int,
    device: torch.device,
    progress: bool,
) -> float:
    """Fine-tune, then (two-stage, or nothing fine-tuned) fit the exit heads on the frozen
    backbone's features; returns the seconds it took, for the metadata."""
    started = time.perf_counter()
    if cfg.epochs > 0:
        finetune(model, train, cfg, pad_id, device, progress)
    if cfg.epochs == 0 or (cfg.schedule == "two-stage" and model.num_layers > 1):
        subset = train.head(cfg.head_rows or len(train.ids))
        feats, labels, teacher = pooled(model, subset, cfg, pad_id, device)
        # The final exit was trained with the backbone, unless nothing was fine-tuned.
        layers = model.num_layers if cfg.epochs == 0 else model.num_layers - 1
        train_exit_heads(model, feats, labels, cfg, progress, teacher, layers)
        model.exits.to(device)
    return time.perf_counter() - started


def train_variant(
    variant: str,
    out_dir: Path,
    cfg: TrainConfig | None = None,
    encoder: str | None = None,
    progress: bool = True,
) -> artifacts.VariantMetadata:
    """Train ``variant`` (a catalogue name) and write its artifacts to ``out_dir``.

    ``encoder`` replaces the catalogue's packaged encoder with any BERT-family checkpoint
    directory, for users who bring their own (bert-base, a model fine-tuned on IMDB, ...).
    """
    profile = VARIANTS[variant]
    cfg = cfg or DEFAULTS[variant]
    seed_everything(cfg.seed)
    device = pick_device()
    source = encoder or profile.encoder
    num_layers = None if encoder else profile.num_layers
    model, tokenizer = artifacts.build(encoders.resolve(source), num_layers, len(LABELS))
    model.to(device)
    pad_id = int(tokenizer.pad_token_id or 0)

    train_rows = load_reviews("train", cfg.validation_tenths)
    if cfg.limit:
        train_rows = train_rows[: cfg.limit]
    train = encode(tokenizer, train_rows, cfg.max_length)
    val = encode(tokenizer, load_reviews("validation", cfg.validation_tenths), cfg.max_length)
    log.info(
        "%s: %d train / %d validation rows on %s", variant, len(train.ids), len(val.ids), device
    )
    cfg = _distillation(variant, cfg, out_dir, train, train_rows)
    seconds = _fit(model, train, cfg, pad_id, device, progress)
    accuracy = exit_accuracy(model, val, cfg, pad_id, device)

    meta = artifacts.VariantMetadata(
        variant=variant,
        encoder=source,
        model_type=str(model.backbone.encoder.config.model_type),
        tokenizer=profile.tokenizer,
        num_layers=model.num_layers,
        hidden_size=model.backbone.hidden_size,
        labels=list(LABELS),
        max_length=cfg.max_length,
        params=artifacts.count_params(model),
        exit_accuracy=accuracy,
        training={
            **{k: v for k, v in vars(replace(cfg)).items()},
            "profile": cfg.profile,
            "device": str(device),
            "seconds": round(seconds, 1),
            "train_rows": len(train.ids),
        },
    )
    model.cpu()
    artifacts.save(out_dir, model, tokenizer, meta)
    log.info("%s: validation accuracy per exit %s (%.0f s)", variant, accuracy, seconds)
    return meta
