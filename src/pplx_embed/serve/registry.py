"""Several models in one process, routed by name; traffic-split aliases and shadow models.

* ``--model name=source`` serves a model under ``name`` (each with its own pipeline; a source
  ``BASE+ADAPTER`` is a LoRA adapter over BASE, and all adapters of one base share one copy of its
  weights, see ``model/adapter.py``); ``--model source``
  serves it under ``source`` as given (``minilm``, ``pplx-embed-v1-0.6b``). Either way every name a client
  may know it by also resolves: the served name, the source, the model's recorded name and, for a
  Perplexity model, its Perplexity names (``pplx-embed-v1-0.6b`` and ``perplexity-ai/pplx-embed-v1-0.6b``).
* ``--split alias=modelA:90,modelB:10`` routes each request for ``alias`` to one of the models,
  at random in proportion to the weights (an A/B test of a model swap).
* ``--shadow primary=candidate`` also embeds every request served by ``primary`` with
  ``candidate`` in the background (never delaying or changing the answer) and records how well they
  agree: the mean cosine of the two embeddings of each input (models of equal dimension) and the
  correlation of the pairwise similarities of a request's inputs (any two models).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from pplx_embed.errors import InputError
from pplx_embed.model.checkpoint import HUB_ALIASES
from pplx_embed.model.quantization import cosine_similarity, unpack_binary
from pplx_embed.serve.pipeline import Pipeline


def parse_model_spec(spec: str) -> tuple[str | None, str]:
    """``name=source`` or bare ``source`` (served under the model's own name)."""
    name, sep, source = spec.partition("=")
    if not sep:
        return None, spec
    if not name or not source:
        raise InputError(f"--model {spec!r}: expected NAME=SOURCE or SOURCE")
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
            raise InputError(f"--split {spec!r}: expected ALIAS=MODEL:WEIGHT,MODEL:WEIGHT with positive weights")
        targets.append((model, value))
    if not sep or not alias or len(targets) < 1:
        raise InputError(f"--split {spec!r}: expected ALIAS=MODEL:WEIGHT,MODEL:WEIGHT")
    return alias, targets


def parse_shadow(spec: str) -> tuple[str, str]:
    """``primary=candidate``."""
    primary, sep, candidate = spec.partition("=")
    if not sep or not primary or not candidate:
        raise InputError(f"--shadow {spec!r}: expected PRIMARY=CANDIDATE")
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


def model_names(name: str, source: object, recorded: str) -> list[str]:
    """Every name a model served as ``name`` answers to: ``name``, its source, its recorded and Perplexity names."""
    names = [name, *([source] if isinstance(source, str) else []), recorded]
    for short, hub_id in HUB_ALIASES.items():
        if recorded.lower() in (short, hub_id.lower()):
            names += [short, hub_id]
    return list(dict.fromkeys(names))


@dataclass
class ServedModel:
    """A loaded model under its served name (and the other names it answers to), with its pipeline."""

    name: str
    embedder: object  # pplx_embed.Embedder
    pipeline: Pipeline
    names: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {"id": self.name, "object": "model", "owned_by": "pplx-embed", "model": self.embedder.name,
                "aliases": [n for n in self.names if n != self.name], "dimension": self.embedder.dimension,
                "max_length": self.embedder.max_length, "pooling": self.embedder.checkpoint.pooling,
                "engine": self.embedder.engine_info.to_dict(measurements=False)}


class Registry:
    """Served models, split aliases and shadows; picks the model for each request."""

    def __init__(self, models: list[ServedModel], splits: dict[str, list[tuple[str, float]]] | None = None,
                 shadows: dict[str, str] | None = None, metrics=None, rng: random.Random | None = None):
        if not models:
            raise InputError("serve at least one model")
        self.models: dict[str, ServedModel] = {m.name: m for m in models}
        self.metrics = metrics
        self.splits = dict(splits or {})
        self.shadows = dict(shadows or {})
        self._rng = rng or random.Random()
        for alias, targets in self.splits.items():
            if alias in self.models:
                raise InputError(f"split alias {alias!r} is also a model name")
            for model, _ in targets:
                if model not in self.models:
                    raise InputError(f"split {alias!r} names {model!r}, which is not a served model "
                                     f"({', '.join(self.models)})")
        for primary, candidate in self.shadows.items():
            for model in (primary, candidate):
                if model not in self.models:
                    raise InputError(f"shadow {primary}={candidate}: {model!r} is not a served model")
        # served names and split aliases first; another name means the first model that answers to it
        self._by_name = {name: name for name in self.models}
        for model in models:
            for name in model.names:
                if name not in self.splits:
                    self._by_name.setdefault(name, model.name)
        self.default = next(iter(self.models))

    @property
    def names(self) -> list[str]:
        """Served names and split aliases (what ``/v1/models`` lists as ids)."""
        return [*self.models, *self.splits]

    def known(self, name: str) -> bool:
        return name in self._by_name or name in self.splits

    def names_of(self, name: str) -> list[str]:
        """The names an API key may be scoped to that grant a request for ``name``."""
        if name in self.splits:
            return [name]
        return self.models[self._by_name[name]].names

    def resolve(self, name: str | None) -> ServedModel:
        """The model serving a request for ``name`` (default model if ``None``; a split alias draws one)."""
        name = name or self.default
        if name in self.splits:
            models, weights = zip(*self.splits[name])
            chosen = self._rng.choices(models, weights)[0]
            if self.metrics is not None:
                self.metrics.split.labels(name, chosen).inc()
            return self.models[chosen]
        if name in self._by_name:
            return self.models[self._by_name[name]]
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


class UnknownModel(LookupError):
    pass
