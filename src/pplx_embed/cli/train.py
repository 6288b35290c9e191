"""``pplx-embed train diffusion|pairs|contextual|triplets``, ``merge``, ``export-encoder`` and ``finetune``."""

from __future__ import annotations

import argparse
import json
import logging
import sys


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` where there is a value to show (not for required or unset options)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _comma_ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def cmd_train(args: argparse.Namespace) -> int:
    overrides = {"output": args.output, "model": args.model, "device": args.device}
    if args.stage == "diffusion":
        from pplx_embed.train.config import load_diffusion_config
        from pplx_embed.train.diffusion import train_diffusion

        result = train_diffusion(load_diffusion_config(args.config, **overrides), args.resume, not args.quiet)
        result.pop("history", None)
    else:
        from pplx_embed.train.config import load_stage_config
        from pplx_embed.train.contrastive import train_stage

        config = load_stage_config(args.config, **overrides)
        if config.stage != args.stage:
            raise ValueError(f"{args.config} configures stage {config.stage!r}, not {args.stage!r}")
        result = train_stage(config, args.resume, not args.quiet)
        result.pop("history", None)
    print(json.dumps(result, indent=2))
    return 0


def _log_lines(quiet: bool) -> None:
    """The library's progress log lines (mining, evaluation, merging) on stderr, unless ``--quiet``."""
    if not quiet:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("pplx-embed: %(message)s"))
        logger = logging.getLogger("pplx_embed")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def cmd_merge(args: argparse.Namespace) -> int:
    from pplx_embed.train.merge import merge_checkpoints

    _log_lines(args.quiet)
    out = merge_checkpoints(args.a, args.b, args.output, args.t, overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote slerp({args.a}, {args.b}, t={args.t}) to {out}", file=sys.stderr)
    return 0


def cmd_export_encoder(args: argparse.Namespace) -> int:
    from pplx_embed.train.diffusion import export_encoder

    out = export_encoder(args.model, args.output, args.attention)
    print(f"wrote the {args.attention} encoder of {args.model} to {out}", file=sys.stderr)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from pplx_embed.train.finetune import finetune

    _log_lines(args.quiet)
    summary = finetune(
        args.model, args.train, args.output, args.eval, resume=args.resume, progress=not args.quiet,
        merge_start=args.merge_start, checks=args.check, replay=args.replay,
        replay_fraction=args.replay_fraction, lora=args.lora,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, max_examples=args.max_examples,
        max_length=args.max_length, temperature=args.temperature, micro_batch=args.micro_batch,
        quantizations=args.qat.split(",") if args.qat else None, mrl_dims=args.mrl_dims, eval_every=args.eval_every,
        patience=args.patience, eval_max_queries=args.eval_max_queries, eval_max_corpus=args.eval_max_corpus,
        warmup_steps=args.warmup_steps, seed=args.seed, device=args.device, max_steps=args.max_steps,
        bf16=args.bf16, hard_negatives=args.hard_negatives, holdout=args.holdout)
    summary.pop("history", None)
    print(json.dumps(summary, indent=2))
    print(summary["line"], file=sys.stderr)
    return 0


def register(sub) -> None:
    """Add ``train``, ``merge``, ``export-encoder`` and ``finetune`` to the ``pplx-embed`` sub-commands."""
    train = sub.add_parser("train", help="run a training stage from a YAML/JSON config")
    train.add_argument("stage", choices=("diffusion", "pairs", "contextual", "triplets"))
    train.add_argument("--config", "-c", required=True, help="stage config file (.yaml/.yml/.json); see configs/")
    train.add_argument("--output", "-o", default=None, help="output directory (overrides the config)")
    train.add_argument("--model", "-m", default=None, help="starting checkpoint (overrides the config)")
    train.add_argument("--device", default=None)
    train.add_argument("--resume", action="store_true", help="continue from <output>/last")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    merge = sub.add_parser("merge", help="SLERP-merge two checkpoints parameter by parameter")
    merge.add_argument("a", help="checkpoint directory or model name A (t=0; its config, tokenizer and buffers "
                                 "are kept)")
    merge.add_argument("b", help="checkpoint directory or model name B (t=1)")
    merge.add_argument("--t", type=float, default=0.5, help="interpolation weight of B (default 0.5)")
    merge.add_argument("--output", "-o", required=True, help="output checkpoint directory")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    merge.add_argument("--quiet", action="store_true", help="no progress bar")
    merge.set_defaults(func=cmd_merge)

    export = sub.add_parser("export-encoder", help="write a causal Qwen3 LM's decoder as an embedding checkpoint")
    export.add_argument("model", help="Qwen3ForCausalLM checkpoint directory (or random:<preset>)")
    export.add_argument("--output", "-o", required=True, help="output checkpoint directory")
    export.add_argument("--attention", choices=("bidirectional", "causal"), default="bidirectional",
                        help="causal: keep the causal mask (ablation arm); bidirectional: mask off, no training")
    export.set_defaults(func=cmd_export_encoder)

    ft = sub.add_parser("finetune", help="fine-tune a model on query/positive pairs (JSONL)",
                        formatter_class=_DefaultsHelp,
                        description="The measured default recipe with only --model, --train and --output: a held-out "
                                    "slice of the pairs to keep the best checkpoint by, one mined hard negative per "
                                    "pair, in-batch InfoNCE (bf16 where native), then a SLERP merge back toward the "
                                    "starting model, which keeps most of the in-domain gain without the forgetting. "
                                    "Each epoch shuffles the pairs and drops the last partial batch. "
                                    "See docs/training.md.")
    ft.add_argument("--model", "-m", required=True, help="alias (minilm, pplx-embed-v1-0.6b ...) or checkpoint "
                                                         "directory to start from")
    ft.add_argument("--train", required=True, help='pairs JSONL: {"query": ..., "positive": ...} per line')
    ft.add_argument("--eval", default=None, help="BEIR directory to evaluate before/after (early stopping, best kept)")
    ft.add_argument("--holdout", type=int, default=None,
                    help="hold this many random training pairs out and evaluate / keep the best / stop early on them "
                         "(OUT/holdout/; pairs sharing their texts leave training too); default: 10%% of the pairs "
                         "up to 1000, or none with --eval; 0: none")
    ft.add_argument("--hard-negatives", type=int, default=1,
                    help="mine this many hard negatives per pair with the starting model (skipping near-duplicates "
                         "of the positive and candidates scored above it)")
    ft.add_argument("--output", "-o", required=True, help="output directory (best/, last/, log.jsonl, summary.json)")
    ft.add_argument("--epochs", type=int, default=1, help="passes over the training pairs")
    ft.add_argument("--batch-size", type=int, default=32, help="pairs per step; each query's negatives are the other "
                                                               "positives of its batch")
    ft.add_argument("--lr", type=float, default=None,
                    help="peak learning rate (AdamW, linear decay); default 5e-5, with --lora 5e-4")
    ft.add_argument("--max-examples", type=int, default=None,
                    help="train on this many pairs sampled at random (seeded by --seed); default: all")
    ft.add_argument("--max-length", type=int, default=256, help="document tokens (queries: 64)")
    ft.add_argument("--temperature", type=float, default=0.05, help="InfoNCE softmax temperature")
    ft.add_argument("--micro-batch", type=int, default=None,
                    help="gradient caching: embed in pieces of this size (same result, less memory)")
    ft.add_argument("--qat", default=None,
                    help="quantization-aware views to train, e.g. float,int8,binary (default: float only)")
    ft.add_argument("--mrl-dims", type=_comma_ints, default=None,
                    help="Matryoshka dims trained besides full, e.g. 128,256")
    ft.add_argument("--eval-every", type=int, default=None, help="evaluate every N steps (default: each epoch)")
    ft.add_argument("--patience", type=int, default=3, help="evaluations without improvement before stopping")
    ft.add_argument("--eval-max-queries", type=int, default=None,
                    help="evaluate on this many random queries (default: all)")
    ft.add_argument("--eval-max-corpus", type=int, default=None,
                    help="corpus subset: relevant rows + random others, this many in all (default: all)")
    ft.add_argument("--warmup-steps", type=int, default=None,
                    help="linear learning-rate warm-up steps (default: 5%% of the steps)")
    ft.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (default: all epochs)")
    ft.add_argument("--seed", type=int, default=0, help="seed of shuffling, sampling and initialisation")
    ft.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    ft.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast; weights and losses stay fp32 (default: on GPU and on CPUs with AMX / "
                         "avx512_bf16, where it is fast; off where it would be emulated)")
    from pplx_embed.train.config import FORGET_LIMIT, MERGE_GRID, MERGE_START

    ft.add_argument("--merge-start", default="auto", metavar="T",
                    help="write slerp(start, best, T) to OUT/merged, the result: T is the weight kept of the "
                         "fine-tune (1: no merge, the result is OUT/best); auto: the largest T of "
                         f"{', '.join(map(str, MERGE_GRID))} whose every --check loses at most {FORGET_LIMIT} "
                         f"points, {MERGE_START} without --check")
    ft.add_argument("--check", action="append", default=None, metavar="SET",
                    help="general set scored before and after (forgetting): a BEIR directory (nDCG@10) or an STS "
                         ".tsv (Spearman), e.g. ../shared/data/xquad/en; repeatable")
    ft.add_argument("--replay", default=None, metavar="PAIRS",
                    help="pairs JSONL of general pairs mixed into training (--replay-fraction of the training pairs)")
    ft.add_argument("--replay-fraction", type=float, default=0.25, help="general pairs per training pair")
    ft.add_argument("--lora", type=int, default=None, metavar="R",
                    help="train a LoRA adapter of rank R (peft) instead of the weights; OUT/best is the adapter "
                         "(a few MB): Embedder(BASE, adapter=OUT/best), serve --model NAME=BASE+OUT/best")
    ft.add_argument("--resume", action="store_true", help="continue from <output>/last")
    ft.add_argument("--quiet", action="store_true", help="no progress bar")
    ft.set_defaults(func=cmd_finetune)
