"""Contrastive stages: pair, contextual and triplet training (with QAT, MRL, curriculum phases).

One trainer runs every stage; a stage only decides how a batch becomes embedding groups and how
the loss reads them:

* ``pairs``      – InfoNCE of each query against all positives of the (global) batch, false negatives masked;
* ``triplets``   – the same with mined hard negatives added as extra candidates;
* ``contextual`` – late-chunked documents, dual loss in-sequence + in-batch at chunk and document level.

Large effective batches: ``micro_batch`` turns on gradient caching (embed the whole batch without
graph, take the loss gradient w.r.t. the embeddings, then re-run each micro-batch with graph and
back-propagate its slice), and under ``torchrun`` the pair/triplet embeddings of all processes are
gathered so the loss sees ``batch_size × world size`` in-batch negatives. Every loss is averaged
over the (Matryoshka dim × quantization) views of the config.

Output directory: ``last/`` (runtime checkpoint + trainer state, for ``resume``), ``best/`` (best
evaluation, when evaluating), ``log.jsonl`` (losses, learning rate, evaluations) and ``summary.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pplx_embed.atomic import write_text
from pplx_embed.errors import InputError
from pplx_embed.model.pooling import Sequence
from pplx_embed.options import EmbedderOptions
from pplx_embed.train import distributed as dist
from pplx_embed.train.config import StageConfig, to_dict
from pplx_embed.train.data import (
    ContextualExample,
    Pair,
    epoch_batches,
    load_contextual,
    load_pairs,
    read_jsonl,
    select_phase,
    write_pairs,
)
from pplx_embed.train.encoder import TrainableEncoder
from pplx_embed.train.losses import contextual_dual_loss, cosine_scores, false_negative_mask, info_nce, mrl_qat_loss
from pplx_embed.train.schedule import restore, warmup_linear

GroupLoss = Callable[[list[torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class Batch:
    groups: list[list[Sequence]]  # sequences embedded together per role (queries, positives, ...)
    loss: GroupLoss  # embeddings of each group (gathered across processes when ``gather``) → loss, views
    gather: bool


class ContrastiveTrainer:
    """Runs one contrastive stage from a :class:`StageConfig`; ``run()`` returns the summary."""

    def __init__(self, config: StageConfig, resume: bool = False, progress: bool = True):
        self.config = config
        self.rank, self.world = dist.init_distributed()
        dist.seed_everything(config.seed)
        self.out = Path(config.output)
        self.progress = progress and dist.is_main()
        last = self.out / "last"
        self.state: dict = {}
        source = config.model
        if resume:
            if not (last / "trainer_state.pt").is_file():
                raise InputError(f"nothing to resume: {last} holds no trainer_state.pt")
            self.state = torch.load(last / "trainer_state.pt", weights_only=False)
            source = str(last)
        device = config.device or dist.default_device()
        if config.lora:  # a LoRA run resumes the adapter it saved, over the starting model
            source, adapter = config.model, (str(last) if resume else None)
        else:
            adapter = None
        options = EmbedderOptions(model=str(source), device=device)  # the config decides, not PPLX_EMBED_*
        self.encoder = TrainableEncoder(options, config.max_length, config.gradient_checkpointing, config.lora, adapter)
        self.encoder.model.train()
        if config.parallel == "fsdp" and config.eval is not None and self.world > 1:
            raise InputError("eval during training is not supported with parallel: fsdp; evaluate the saved "
                             "checkpoint with `pplx-embed eval` (or use ddp)")
        self.runner = dist.wrap(self.encoder.model, self.encoder.device, config.parallel)
        self.phases = [self._phase_examples(i) for i in range(len(config.phases))]
        self.total_steps = sum(
            len(epoch_batches(len(ex), config.batch_size, config.seed, 0, self.rank, self.world)) * phase.epochs
            for ex, phase in zip(self.phases, config.phases))
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        trained = [p for p in self.encoder.model.parameters() if p.requires_grad]  # LoRA: the adapter only
        decay = [p for p in trained if p.ndim > 1]
        no_decay = [p for p in trained if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": config.optim.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW if config.optim.optimizer == "adamw" else torch.optim.SGD
        self.optimizer = optimizer(groups, lr=config.optim.lr)
        self.scheduler = warmup_linear(self.optimizer, config.optim.warmup_steps, self.total_steps)
        self.step = 0
        self.best: float | None = None
        self.bad_evals = 0
        self.history: list[dict] = []
        self.eval_set = None
        if config.eval is not None and dist.is_main():
            from pplx_embed.train.evaluation import load_eval_set

            e = config.eval
            self.eval_set = load_eval_set(e.data, e.max_queries, e.max_corpus, e.seed)
        if self.state:
            dist.load_optimizer_state(self.encoder.model, self.optimizer, self.state["optimizer"])
            restore(self.scheduler, self.state["scheduler"])
            self.step, self.best, self.bad_evals = self.state["step"], self.state["best"], self.state["bad_evals"]
            self.history = self.state.get("history", [])
            torch.set_rng_state(self.state["rng"])

    # ---- data --------------------------------------------------------------------------------
    def _phase_examples(self, index: int) -> list:
        phase = self.config.phases[index]
        if self.config.stage == "contextual":
            examples = load_contextual(phase.data)
            if phase.max_examples is not None:
                import random

                examples = random.Random(self.config.seed).sample(examples, min(phase.max_examples, len(examples)))
            return examples
        pairs = select_phase(load_pairs(phase.data), phase, self.config.seed)
        if self.config.stage == "triplets":
            mining = self.config.mining
            # mined once by the starting model; a resumed run (or another run of the same inputs) reuses it
            mined = self.out / f"mined-{index}.jsonl"
            key = self._mining_key(index) if mining is not None else None
            if mining is not None and mined.is_file() and _read_json(mined.with_suffix(".json")) == key:
                pairs = load_pairs(mined)
            elif mining is not None:
                from pplx_embed.train.mining import mine_hard_negatives

                corpus = ([p.positive for p in pairs] if mining.corpus is None else _read_corpus(mining.corpus))
                with self._autocast():
                    pairs = mine_hard_negatives(self.encoder.embedder, pairs, corpus, mining, self.progress)
                if dist.is_main():
                    write_pairs(mined, pairs)
                    write_text(mined.with_suffix(".json"), json.dumps(key, indent=2))
            if not pairs or any(not p.negatives for p in pairs):
                raise InputError(f"triplet phase {phase.data}: every pair needs a 'negative' (or configure mining)")
            count = min(len(p.negatives) for p in pairs)
            pairs = [Pair(p.query, p.positive, p.negatives[:count], p.lang, p.query_lang, p.positive_lang)
                     for p in pairs]
        return pairs

    def _mining_key(self, index: int) -> dict:
        """What mined negatives depend on: the starting model, the phase's data (content) and selection, mining."""
        phase = self.config.phases[index]
        digest = hashlib.sha256(Path(phase.data).read_bytes()).hexdigest()
        return {"model": self.config.model, "data_sha256": digest, "phase": to_dict(phase) | {"data": None},
                "seed": self.config.seed, "mining": to_dict(self.config.mining)}

    def _pair_batch(self, pairs: list[Pair]) -> Batch:
        enc, cfg = self.encoder, self.config
        groups = [enc.text_sequences([p.query for p in pairs], cfg.query_max_length),
                  enc.text_sequences([p.positive for p in pairs])]
        for k in range(len(pairs[0].negatives)):
            groups.append(enc.text_sequences([p.negatives[k] for p in pairs]))

        def loss(reps: list[torch.Tensor]):
            queries, candidates = reps[0], torch.cat(reps[1:])
            positives = torch.arange(len(queries), device=queries.device)
            exclude = false_negative_mask(cosine_scores(queries, candidates), positives, cfg.loss.false_negative_margin,
                                          cosine_scores(candidates, candidates), cfg.loss.duplicate_threshold)
            return mrl_qat_loss(lambda q, c: info_nce(q, c, positives, cfg.loss.temperature, exclude),
                                queries, candidates, self._dims(), cfg.loss.quantizations)

        return Batch(groups, loss, gather=self.world > 1)

    def _contextual_batch(self, examples: list[ContextualExample]) -> Batch:
        enc, cfg = self.encoder, self.config
        docs: dict[tuple[str, ...], int] = {}
        for ex in examples:
            docs.setdefault(tuple(ex.chunks), len(docs))
        doc_list = [list(d) for d in docs]
        offsets, total = [], 0
        for d in doc_list:
            offsets.append(total)
            total += len(d)
        chunk_doc = torch.tensor([i for i, d in enumerate(doc_list) for _ in d], device=enc.device)
        positives = torch.tensor([offsets[docs[tuple(ex.chunks)]] + ex.positive for ex in examples], device=enc.device)
        groups = [enc.text_sequences([ex.query for ex in examples], cfg.query_max_length),
                  enc.document_sequences(doc_list)]
        weights = tuple(cfg.loss.contextual_weights)

        def loss(reps: list[torch.Tensor]):
            queries, chunks = reps
            exclude = false_negative_mask(cosine_scores(queries, chunks), positives, cfg.loss.false_negative_margin,
                                          cosine_scores(chunks, chunks), cfg.loss.duplicate_threshold)
            return mrl_qat_loss(
                lambda q, c: contextual_dual_loss(q, c, chunk_doc, positives, cfg.loss.temperature, exclude,
                                                  weights)[0],
                queries, chunks, self._dims(), cfg.loss.quantizations)

        return Batch(groups, loss, gather=False)

    def _dims(self) -> list[int | None]:
        dims = [d for d in (self.config.loss.mrl_dims or []) if d < self.encoder.dimension]
        return [*sorted(set(dims)), None]

    # ---- one optimisation step ---------------------------------------------------------------
    def _autocast(self):
        if not self.config.bf16:
            return contextlib.nullcontext()
        return torch.autocast("cuda" if self.encoder.device.startswith("cuda") else "cpu", dtype=torch.bfloat16)

    def _embed(self, sequences: list[Sequence]) -> torch.Tensor:
        with self._autocast():
            return self.encoder.forward(sequences, self.runner).float()  # losses in fp32

    def train_step(self, batch: Batch) -> tuple[float, dict[str, float]]:
        """Forward, loss and backward for one batch (gradient caching when ``micro_batch`` is set)."""
        gather = dist.gather_with_grad if batch.gather else (lambda x: x)
        micro = self.config.micro_batch
        if micro is None:
            reps = [gather(self._embed(group)) for group in batch.groups]
            loss, views = batch.loss(reps)
            loss.backward()
            return loss.item(), views
        pieces = [(g, s) for g, group in enumerate(batch.groups) for s in range(0, len(group), micro)]
        rng, cached = [], [[] for _ in batch.groups]
        with torch.no_grad():
            for g, s in pieces:
                rng.append(torch.get_rng_state())
                cached[g].append(self._embed(batch.groups[g][s : s + micro]))
        leaves = [torch.cat(parts).requires_grad_() for parts in cached]
        loss, views = batch.loss([gather(leaf) for leaf in leaves])
        loss.backward()
        offsets = [[0] for _ in batch.groups]
        for g, parts in enumerate(cached):
            for part in parts:
                offsets[g].append(offsets[g][-1] + len(part))
        for n, (g, s) in enumerate(pieces):
            torch.set_rng_state(rng[n])  # same dropout as the cached pass
            last = n == len(pieces) - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.runner, "no_sync") else self.runner.no_sync()
            with sync:
                k = s // micro
                part = self._embed(batch.groups[g][s : s + micro])
                part.backward(leaves[g].grad[offsets[g][k] : offsets[g][k + 1]])
        return loss.item(), views

    def _optimizer_step(self) -> None:
        if self.config.optim.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.encoder.model.parameters(), self.config.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    # ---- evaluation, checkpoints, logs -------------------------------------------------------
    def evaluate(self) -> dict | None:
        """Metrics of the current weights on the eval set (main process), or ``None`` without one.

        Top-level keys are the float full-dimension metrics; ``views`` holds every configured view.
        """
        if self.eval_set is None:
            return None
        from pplx_embed.train.evaluation import parse_view, retrieval_scores

        views = [("float", None)] + [parse_view(v) for v in self.config.eval.views]
        scores = retrieval_scores(self.encoder.embedder, self.eval_set, list(dict.fromkeys(views)),
                                  progress=self.progress)
        return {**scores["float@full"], "views": scores}

    def _log(self, record: dict) -> None:
        if dist.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            with (self.out / "log.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _save(self, name: str, position: tuple[int, int, int]) -> None:
        # under FSDP gathering the full weights is a collective: every process takes part, rank 0 writes
        weights, optimizer = dist.full_state(self.encoder.model, self.optimizer if name == "last" else None)
        if not dist.is_main():
            return
        info = {"stage": self.config.stage, "step": self.step, "best": self.best, "config": to_dict(self.config)}
        state = None
        if name == "last":
            state = {"optimizer": optimizer, "scheduler": self.scheduler.state_dict(),
                     "step": self.step, "best": self.best, "bad_evals": self.bad_evals, "position": position,
                     "history": self.history, "rng": torch.get_rng_state()}
        self.encoder.save(self.out / name, info, state, weights)

    def _check(self, position: tuple[int, int, int]) -> bool:
        """Evaluate, keep the best checkpoint, and say whether to stop early (same answer on every process)."""
        stop = False
        if dist.is_main() and self.eval_set is not None:
            metrics = self.evaluate()
            value = metrics[self.config.eval.metric]
            self.history.append({"step": self.step, **metrics})
            self._log({"step": self.step, "eval": metrics})
            if self.best is None or value > self.best:
                self.best, self.bad_evals = value, 0
                self._save("best", position)
            else:
                self.bad_evals += 1
                patience = self.config.eval.patience
                stop = patience is not None and self.bad_evals >= patience
        stop = dist.broadcast(stop)
        self._save("last", position)
        dist.barrier()
        return stop

    # ---- the loop ----------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.config
        if dist.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        before = None
        if not self.state and self.eval_set is not None and cfg.eval.before:
            before = self.evaluate()
            self.best = before[cfg.eval.metric]
            self.history.append({"step": 0, **before})
            self._log({"step": 0, "eval": before})
            self._save("best", (0, 0, 0))
        resume_at = tuple(self.state.get("position", (0, 0, 0)))
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.progress, desc=cfg.stage, unit="step")
        early, checked_at, started = False, self.step, time.time()
        position = resume_at
        for p, (examples, phase) in enumerate(zip(self.phases, cfg.phases)):
            for epoch in range(phase.epochs):
                batches = epoch_batches(len(examples), cfg.batch_size, cfg.seed, epoch, self.rank, self.world)
                for b, indices in enumerate(batches):
                    if (p, epoch, b) < resume_at:
                        continue
                    if early or (cfg.max_steps is not None and self.step >= cfg.max_steps):
                        break
                    chosen = [examples[i] for i in indices]
                    batch = self._contextual_batch(chosen) if cfg.stage == "contextual" else self._pair_batch(chosen)
                    loss, views = self.train_step(batch)
                    lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
                    self._optimizer_step()
                    self.step += 1
                    position = (p, epoch, b + 1)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}")
                    if self.step % cfg.log_every == 0 or self.step == 1:
                        self._log({"step": self.step, "phase": phase.name or p, "epoch": epoch,
                                   "loss": dist.all_mean(loss), "views": views, "lr": lr,
                                   "elapsed_s": round(time.time() - started, 2)})
                    if cfg.eval is not None and cfg.eval.every_steps and self.step % cfg.eval.every_steps == 0:
                        early, checked_at = self._check(position), self.step
                    elif cfg.save_every and self.step % cfg.save_every == 0:
                        self._save("last", position)
                if early or (cfg.max_steps is not None and self.step >= cfg.max_steps):
                    break
                position = (p, epoch + 1, 0)
                if checked_at != self.step:  # end of epoch
                    early, checked_at = self._check(position), self.step
            if early or (cfg.max_steps is not None and self.step >= cfg.max_steps):
                break
        if checked_at != self.step or not (self.out / "last").is_dir():
            self._check(position)
        bar.close()
        summary = {"stage": cfg.stage, "steps": self.step, "examples": [len(ex) for ex in self.phases],
                   "world_size": self.world,
                   "parallel": cfg.parallel if self.world > 1 else None, "sharded": dist.is_sharded(self.encoder.model),
                   "metric": cfg.eval and cfg.eval.metric,
                   "before": before, "best": self.best, "early_stopped": early, "history": self.history,
                   "output": str(self.out / ("best" if self.eval_set is not None else "last"))}
        if dist.is_main():
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _read_corpus(path: str) -> list[str]:
    if path.endswith((".jsonl", ".json")):
        return [row.get("text") or row.get("positive") for _, row in read_jsonl(path)]
    return [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def train_stage(config: StageConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run one contrastive stage; see :class:`ContrastiveTrainer`."""
    return ContrastiveTrainer(config, resume, progress).run()
