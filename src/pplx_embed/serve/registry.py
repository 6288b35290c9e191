"""Several models in one process, routed by name; traffic-split aliases and shadow models.

* ``--model name=source`` serves a model under ``name`` (each with its own batcher).
* ``--split alias=modelA:90,modelB:10`` routes each request for ``alias`` to one of the models,
  at random in proportion to the weights (an A/B test of a model swap).
* ``--shadow primary=candidate`` also embeds every request served by ``primary`` with
  ``candidate`` in the background (never delaying or changing the answer) and records how well they
  agree: the mean cosine of the two embeddings of each input (models of equal dimension) and the
  correlation of the pairwise similarities of a request's inputs (any two models).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from pplx_embed.model.quantization import cosine_similarity, unpack_binary
from pplx_embed.serve.batcher import Batcher
from pplx_embed.serve.metrics import Metrics


def parse_model_spec(spec: str) -> tuple[str | None, str]:
    """``name=source`` or bare ``source`` (served under the model's own name)."""
    name, sep, source = spec.partition("=")
    if not sep:
        return None, spec
    if not name or not source:
        raise ValueError(f"--model {spec!r}: expected NAME=SOURCE or SOURCE")
    return name, source


def parse_split(spec: str) -> tuple[str, list[tuple[str, float]]]:
    """``alias=modelA:90,modelB:10`` → ``("alias", [("modelA", 90.0), ("modelB", 10.0)])``."""
    alias, sep, rest = spec.partition("=")
    targets = []
    for part in rest.split(","):
        model, colon, weight = part.strip().rpartition(":")
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if not colon or not model or value <= 0:
            raise ValueError(f"--split {spec!r}: expected ALIAS=MODEL:WEIGHT,MODEL:WEIGHT with positive weights")
        targets.append((model, value))
    if not sep or not alias or len(targets) < 1:
        raise ValueError(f"--split {spec!r}: expected ALIAS=MODEL:WEIGHT,MODEL:WEIGHT")
    return alias, targets


def parse_shadow(spec: str) -> tuple[str, str]:
    """``primary=candidate``."""
    primary, sep, candidate = spec.partition("=")
    if not sep or not primary or not candidate:
        raise ValueError(f"--shadow {spec!r}: expected PRIMARY=CANDIDATE")
    return primary, candidate


def as_float(vectors: np.ndarray, quantization: str, dimensions: int) -> np.ndarray:
    """Wire-precision vectors as float rows comparable by cosine (int8 as is, packed bits as ±1)."""
    if quantization == "binary":
        return unpack_binary(vectors, dimensions).astype(np.float32)
    return vectors.astype(np.float32)


def agreement(primary: np.ndarray, candidate: np.ndarray) -> tuple[float | None, float | None]:
    """``(mean cosine, similarity-structure correlation)`` of two models' vectors for the same inputs.

    The cosine needs equal dimensions; the correlation of the pairwise similarities needs 3+ inputs.
    Inputs embedded as zero vectors (empty chunks) by either model are left out.
    """
    keep = np.any(primary != 0, axis=1) & np.any(candidate != 0, axis=1)  # empty chunks pool to zeros
    primary, candidate = primary[keep], candidate[keep]
    cosine = None
    if primary.shape[-1] == candidate.shape[-1] and len(primary):
        cosine = float(np.mean(np.diag(cosine_similarity(primary, candidate))))
    correlation = None
    if len(primary) >= 3:
        upper = np.triu_indices(len(primary), 1)
        a, b = cosine_similarity(primary, primary)[upper], cosine_similarity(candidate, candidate)[upper]
        if a.std() > 0 and b.std() > 0:
            correlation = float(np.corrcoef(a, b)[0, 1])
    return cosine, correlation


@dataclass
class ServedModel:
    """A loaded model under its served name, with its request queue."""

    name: str
    embedder: object  # pplx_embed.Embedder
    batcher: Batcher

    def describe(self) -> dict:
        return {"id": self.name, "object": "model", "owned_by": "pplx-embed", "model": self.embedder.name,
                "dimension": self.embedder.dimension, "max_length": self.embedder.max_length,
                "pooling": self.embedder.checkpoint.pooling}


class UnknownModel(LookupError):
    pass


class Registry:
    """Served models, split aliases and shadows; picks the model for each request."""

    def __init__(self, embedders: dict[str, object], splits: dict[str, list[tuple[str, float]]] | None = None,
                 shadows: dict[str, str] | None = None, max_queue: int = 128, metrics: Metrics | None = None,
                 rng: random.Random | None = None):
        if not embedders:
            raise ValueError("serve at least one model")
        self.metrics = metrics or Metrics()
        self.splits = dict(splits or {})
        self.shadows = dict(shadows or {})
        self._rng = rng or random.Random()
        for alias, targets in self.splits.items():
            if alias in embedders:
                raise ValueError(f"split alias {alias!r} is also a model name")
            for model, _ in targets:
                if model not in embedders:
                    raise ValueError(f"split {alias!r} names {model!r}, which is not a served model "
                                     f"({', '.join(embedders)})")
        for primary, candidate in self.shadows.items():
            for model in (primary, candidate):
                if model not in embedders:
                    raise ValueError(f"shadow {primary}={candidate}: {model!r} is not a served model")
        self.models: dict[str, ServedModel] = {}
        for name, embedder in embedders.items():
            batcher = Batcher(embedder, max_queue, observer=self.metrics.batch_observer(name))
            self.metrics.watch_model(name, lambda b=batcher: b.depth, lambda b=batcher: b.running,
                                     lambda b=batcher: b.in_flight)
            self.models[name] = ServedModel(name, embedder, batcher)
        self.default = next(iter(self.models))

    @property
    def names(self) -> list[str]:
        return [*self.models, *self.splits]

    def resolve(self, name: str | None) -> ServedModel:
        """The model serving a request for ``name`` (default model if ``None``; a split alias draws one)."""
        name = name or self.default
        if name in self.models:
            return self.models[name]
        if name in self.splits:
            models, weights = zip(*self.splits[name])
            chosen = self._rng.choices(models, weights)[0]
            self.metrics.split.labels(name, chosen).inc()
            return self.models[chosen]
        raise UnknownModel(f"model {name!r} is not served here; available: {', '.join(self.names)}")

    def shadow_of(self, model: str) -> ServedModel | None:
        candidate = self.shadows.get(model)
        return self.models[candidate] if candidate else None

    def record_shadow(self, primary: str, candidate: str, primary_vectors: np.ndarray,
                      candidate_vectors: np.ndarray) -> None:
        cosine, correlation = agreement(primary_vectors, candidate_vectors)
        if cosine is not None:
            self.metrics.shadow_cosine.labels(primary, candidate).observe(cosine)
        if correlation is not None:
            self.metrics.shadow_structure.labels(primary, candidate).observe(correlation)
        self.metrics.shadow_requests.labels(primary, candidate, "ok").inc()

    def describe(self) -> list[dict]:
        out = [m.describe() for m in self.models.values()]
        for alias, targets in self.splits.items():
            out.append({"id": alias, "object": "model", "owned_by": "pplx-embed",
                        "split": {model: weight for model, weight in targets}})
        return out

    def close(self) -> None:
        """Finish queued work and stop every model's worker."""
        for model in self.models.values():
            model.batcher.close()
