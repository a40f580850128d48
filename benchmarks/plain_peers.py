#!/usr/bin/env python
"""Plain-PyTorch peers of the library's baselines: the check that `paradigm="joint"` and `"ensemble"` are at least as
strong as the same models written plainly.

A plain peer takes the SAME backbones as the library's run of the same seed (the benchmark's `build_model`, called
after the same `set_seed`, so the backbones start from the same weights; only the backbones are kept), pools them
plainly (an image backbone's [CLS] token, the mean over positions otherwise), and trains with a hand-written loop
on the same data, steps, batch size, AdamW, learning rate, warm-up and linear decay as `harness.training_arguments`
gives the library's methods, and nothing else (no gradient clipping, weight decay on every parameter, no Trainer):

* ``plain_joint``: pooled features concatenated -> Linear(hidden 128) -> GELU -> Linear -> one cross-entropy;
* ``plain_ensemble``: per modality, pooled features -> Linear(128) -> GELU -> Linear with its own cross-entropy;
  logits averaged;
* ``plain_i2m2``: per-modality MLP experts and a joint MLP expert on the pooled features, log-probabilities summed,
  one cross-entropy (I2M2, Madaan et al. 2024).

`PLAIN_PEERS` maps a method name to its model class; a new peer is a class with the
constructor `(backbones, kinds, num_labels, hidden_dim)` and a forward `(inputs, labels) -> (loss, predictions)`,
added to that dict. `harness.parse_method` knows every name in it, so ``--methods joint,ensemble,plain_joint`` puts
a plain row next to the library's in any interaction benchmark.

    python benchmarks/real_signals.py --quick --methods joint,ensemble,plain_joint,plain_ensemble --out bench_out/p.json
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import get_linear_schedule_with_warmup, set_seed

# The hidden width of the plain heads: the width the plain joint used.
PLAIN_HIDDEN_DIM = 128


def plain_pool(kind: str, output: Any, mask: torch.Tensor | None = None) -> torch.Tensor:
    """An image backbone's [CLS] token; for every other kind the mean of `last_hidden_state` over the positions the
    attention mask keeps (text), or over all of them (the benchmarks' audio is unpadded)."""
    hidden = output.last_hidden_state
    if kind in ("image", "vision"):
        return hidden[:, 0]
    if mask is None or mask.shape[1] != hidden.shape[1]:
        return hidden.mean(dim=1)
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class PlainEncoders(nn.Module):
    """The backbones and how each is called: `inputs[m]` holds modality m's forward kwargs."""

    def __init__(self, backbones: dict[str, nn.Module], kinds: dict[str, str]):
        super().__init__()
        self.backbones = nn.ModuleDict(backbones)
        self.kinds = dict(kinds)
        self.widths = {m: b.config.hidden_size for m, b in backbones.items()}

    def forward(self, inputs: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {
            m: plain_pool(self.kinds[m], self.backbones[m](**inputs[m]), inputs[m].get("attention_mask"))
            for m in self.backbones
        }


def plain_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))


class PlainJoint(nn.Module):
    """Concatenated pooled features -> MLP -> one cross-entropy. With `projection_dim`, each modality's pooled vector
    is first projected to that size by a Linear (as the library projects to `latent_dim`), for ablations."""

    def __init__(self, backbones: dict[str, nn.Module], kinds: dict[str, str], num_labels: int,
                 hidden_dim: int = PLAIN_HIDDEN_DIM, projection_dim: int | None = None):
        super().__init__()
        self.encoders = PlainEncoders(backbones, kinds)
        widths = self.encoders.widths
        self.projections = nn.ModuleDict(
            {m: nn.Linear(w, projection_dim) if projection_dim else nn.Identity() for m, w in widths.items()}
        )
        width = projection_dim * len(widths) if projection_dim else sum(widths.values())
        self.classifier = plain_mlp(width, hidden_dim, num_labels)

    def forward(self, inputs, labels=None):
        pooled = self.encoders(inputs)
        fused = torch.cat([self.projections[m](pooled[m]) for m in self.encoders.backbones], dim=-1)
        logits = self.classifier(fused)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return loss, {"logits": logits}


class PlainEnsemble(nn.Module):
    """One MLP per modality on its pooled features, each with its own cross-entropy; logits averaged."""

    def __init__(self, backbones: dict[str, nn.Module], kinds: dict[str, str], num_labels: int,
                 hidden_dim: int = PLAIN_HIDDEN_DIM, projection_dim: int | None = None):
        super().__init__()
        self.encoders = PlainEncoders(backbones, kinds)
        widths = self.encoders.widths
        self.classifiers = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(w, projection_dim), plain_mlp(projection_dim, hidden_dim, num_labels))
            if projection_dim else plain_mlp(w, hidden_dim, num_labels)
            for m, w in widths.items()
        })

    def forward(self, inputs, labels=None):
        pooled = self.encoders(inputs)
        modality_logits = torch.stack([self.classifiers[m](pooled[m]) for m in self.encoders.backbones], dim=1)
        loss = None
        if labels is not None:
            loss = sum(F.cross_entropy(modality_logits[:, k], labels) for k in range(modality_logits.shape[1]))
        return loss, {"logits": modality_logits.mean(dim=1), "modality_logits": modality_logits}


class PlainI2M2(nn.Module):
    """I2M2 (Madaan et al., NeurIPS 2024) written plainly: an MLP expert per modality on its pooled features and an
    inter-modality MLP expert on their concatenation, log-softmaxes summed (a product of experts), one cross-entropy
    on the sum and none on the experts. With `projection_dim`, each pooled vector is first projected (as the
    library's projections do)."""

    def __init__(self, backbones: dict[str, nn.Module], kinds: dict[str, str], num_labels: int,
                 hidden_dim: int = PLAIN_HIDDEN_DIM, projection_dim: int | None = None):
        super().__init__()
        self.encoders = PlainEncoders(backbones, kinds)
        widths = {m: projection_dim or w for m, w in self.encoders.widths.items()}
        self.projections = nn.ModuleDict(
            {m: nn.Linear(w, projection_dim) if projection_dim else nn.Identity() for m, w in self.encoders.widths.items()}
        )
        self.intra = nn.ModuleDict({m: plain_mlp(w, hidden_dim, num_labels) for m, w in widths.items()})
        self.inter = plain_mlp(sum(widths.values()), hidden_dim, num_labels)

    def forward(self, inputs, labels=None):
        pooled = self.encoders(inputs)
        names = list(self.encoders.backbones)
        features = {m: self.projections[m](pooled[m]) for m in names}
        modality_logits = torch.stack([self.intra[m](features[m]) for m in names], dim=1)
        inter = self.inter(torch.cat([features[m] for m in names], dim=-1))
        logits = modality_logits.log_softmax(-1).sum(1) + inter.log_softmax(-1)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return loss, {"logits": logits, "modality_logits": modality_logits}


# method name -> (plain model class, the library paradigm whose run of the same seed supplies the backbones and the
# config the scores are read with)
PLAIN_PEERS: dict[str, tuple[type[nn.Module], str]] = {
    "plain_joint": (PlainJoint, "joint"),
    "plain_ensemble": (PlainEnsemble, "ensemble"),
    "plain_i2m2": (PlainI2M2, "i2m2"),
}


# ---------------------------------------------------------------------- data and the loop


def _columns(library_model, dataset) -> dict[str, dict[str, str]]:
    """Per modality, dataset column -> the backbone's keyword, read from the library model's input routes."""
    columns = {}
    for m, route in library_model.routes.items():
        names = route.names
        mapping = {}
        for name in (names.main, *names.aliases):
            if name in dataset.column_names:
                mapping[name] = route.backbone_input
        if names.mask and names.mask in dataset.column_names and route.takes_mask:
            mapping[names.mask] = "attention_mask"
        if not mapping:
            raise ValueError(f"the dataset has no input column for the {m} modality (columns: {dataset.column_names})")
        columns[m] = mapping
    return columns


def _tensors(dataset, columns: dict[str, dict[str, str]]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    wanted = [c for mapping in columns.values() for c in mapping]
    has_labels = "labels" in dataset.column_names
    data = dataset.with_format("torch", columns=wanted + (["labels"] if has_labels else []))[:]
    return {c: data[c] for c in wanted}, data["labels"] if has_labels else None


def _batch(tensors: dict[str, torch.Tensor], columns, index) -> dict[str, dict[str, torch.Tensor]]:
    return {m: {kw: tensors[c][index] for c, kw in mapping.items()} for m, mapping in columns.items()}


def train_plain(
    model: nn.Module, train_tensors, train_labels: torch.Tensor, columns, *, steps: int, batch_size: int,
    learning_rate: float, warmup_ratio: float, weight_decay: float, seed: int, max_grad_norm: float | None = None,
) -> float:
    """AdamW with a linear warm-up and decay, reshuffled batches each epoch (the last one partial, as the Trainer's
    sampler gives them), `steps` optimizer steps. Returns the last step's loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    warmup = math.ceil(warmup_ratio * steps) if warmup_ratio < 1 else int(warmup_ratio)
    schedule = get_linear_schedule_with_warmup(optimizer, warmup, steps)
    generator = torch.Generator().manual_seed(seed)
    n, step, loss = len(train_labels), 0, torch.tensor(math.nan)
    model.train()
    while step < steps:
        for index in torch.randperm(n, generator=generator).split(batch_size):
            loss, _ = model(_batch(train_tensors, columns, index), train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            schedule.step()
            step += 1
            if step == steps:
                break
    return float(loss.detach())


@torch.no_grad()
def predict_plain(model: nn.Module, tensors, columns, batch_size: int) -> dict[str, np.ndarray]:
    model.eval()
    n = len(next(iter(tensors.values())))
    parts: dict[str, list[np.ndarray]] = {}
    for index in torch.arange(n).split(batch_size):
        _, predictions = model(_batch(tensors, columns, index))
        for key, value in predictions.items():
            parts.setdefault(key, []).append(value.float().numpy())
    return {key: np.concatenate(values) for key, values in parts.items()}


# What a plain peer's method name may change (`plain_joint:hidden_dim=32+projection_dim=32+max_grad_norm=1.0`), for
# ablations that move the plain model towards the library's to find which difference matters.
PLAIN_OPTIONS = {"hidden_dim": PLAIN_HIDDEN_DIM, "projection_dim": None, "max_grad_norm": None}


def train_and_predict_plain(
    settings, method, build_model: Callable[[Any], Any], seed: int, train, tests: dict,
) -> dict[str, Any]:
    """`harness.train_and_predict` for a plain peer: the same seed, backbones, data, budget and optimizer settings.
    `method.config` holds the `PLAIN_OPTIONS` its name changed."""
    from harness import Method

    unknown = set(method.config) - set(PLAIN_OPTIONS)
    if unknown:
        raise ValueError(f"plain peers take the options {sorted(PLAIN_OPTIONS)}, got {sorted(unknown)}")
    options = {**PLAIN_OPTIONS, **method.config}
    peer_class, paradigm = PLAIN_PEERS[method.name.partition(":")[0]]
    set_seed(seed)
    library = build_model(Method(paradigm, paradigm))  # same seed, same calls: the same initial backbones
    kinds = {spec.name: spec.kind for spec in library.config.modality_specs}
    model = peer_class(dict(library.backbones.items()), kinds, library.config.num_labels, options["hidden_dim"],
                       options["projection_dim"])
    columns = _columns(library, train)
    train_tensors, train_labels = _tensors(train, columns)
    lr = (method.stage_learning_rates or settings.stage_learning_rates)[0]
    start = time.perf_counter()
    train_plain(
        model, train_tensors, train_labels, columns, steps=settings.total_steps, batch_size=settings.batch_size,
        learning_rate=lr, warmup_ratio=settings.warmup_ratio, weight_decay=settings.weight_decay, seed=seed,
        max_grad_norm=options["max_grad_norm"],
    )
    train_time = time.perf_counter() - start
    predictions = {
        name: predict_plain(model, _tensors(data, columns)[0], columns, settings.eval_batch_size)
        for name, data in tests.items()
    }
    return {"config": library.config, "train_time_s": train_time, **predictions}
