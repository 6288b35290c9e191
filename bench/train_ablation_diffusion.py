"""Small-scale ablation of diffusion continued pretraining (docs/training.md, result (c)).

No pretrained Qwen3 weights are available offline, so the start is a small Qwen3ForCausalLM
(Qwen3 architecture and the exact Qwen3 tokenizer/vocabulary, tiny hidden size) briefly pretrained
here with next-token prediction on MedQuAD training answers. From that one causal checkpoint:

* ``causal``        – its decoder used as an embedder with the causal mask kept (``export-encoder --attention causal``);
* ``bidirectional`` – the same weights with the mask turned off, no further training (control);
* ``diffusion``     – ``train diffusion`` (masked-diffusion continued pretraining) for ``--extra-steps``;
* ``causal_plus``   – next-token pretraining continued for the same ``--extra-steps`` (compute-matched
  control for the diffusion arm), used causally.

Every arm then gets the SAME contrastive pair training (same pairs, batches, order, seed,
hyper-parameters) on MedQuAD train pairs, and is scored (nDCG@10 etc., float, runtime engine) before
and after on a medquad/dev subset (random queries; corpus = all their relevant answers + random
other answers) and on xquad/en. The pair-training loss of every step is recorded.

Pretraining shortcut (documented): the next-token softmax of the brief causal pretraining runs over
the token ids that occur in the pretraining text (about 25k of Qwen3's 151,669) instead of the whole
vocabulary — every target is one of them; the embedding matrix stays full size (tied LM head). The
diffusion stage is the library's ``train diffusion``, unchanged (full-vocabulary softmax).

    .venv/bin/python bench/train_ablation_diffusion.py            # all stages; resumes finished ones
    .venv/bin/python bench/train_ablation_diffusion.py --fresh    # start over

Writes docs/benchmarks/train_ablation_diffusion.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm

from pplx_embed.engine.threads import cpu_description

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_run_args, start_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ARMS = ("causal", "diffusion", "bidirectional", "causal_plus")  # run in this order
log = logging.getLogger("train_ablation_diffusion")


def pretraining_texts(n_tokens: int, tokenizer, seed: int = 0) -> list[str]:
    """Distinct MedQuAD training answers in a seeded order, enough for ``n_tokens`` tokens."""
    answers = list(dict.fromkeys(json.loads(line)["positive"] for line in (DATA / "medquad" / "train.jsonl").open()))
    random.Random(seed).shuffle(answers)
    out, total = [], 0
    for text in answers:
        out.append(text)
        total += len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
        if total >= n_tokens:
            break
    return out


def causal_config(args: argparse.Namespace):
    from pplx_embed.model.tokenizer import SEP_TOKEN_ID

    return transformers.Qwen3Config(
        vocab_size=151669, hidden_size=args.hidden, intermediate_size=3 * args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=max(1, args.heads // 2), head_dim=args.hidden // args.heads,
        max_position_embeddings=args.max_length, rope_theta=10_000.0, tie_word_embeddings=True,
        bos_token_id=SEP_TOKEN_ID, eos_token_id=SEP_TOKEN_ID, pad_token_id=SEP_TOKEN_ID)


def pretrain_causal(args: argparse.Namespace, work: Path, blocks: torch.Tensor, tokenizer) -> dict:
    """Next-token pretraining; saves ``lm`` after ``--pretrain-steps`` and ``lm_plus`` after ``--extra-steps`` more."""
    torch.manual_seed(args.seed)
    model = transformers.Qwen3ForCausalLM(causal_config(args))
    vocab = torch.unique(blocks)  # restricted softmax: the ids present in the text (every target is one)
    remap = torch.full((model.config.vocab_size,), -1, dtype=torch.long)
    remap[vocab] = torch.arange(len(vocab))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.pretrain_lr, weight_decay=0.01)
    warmup = 30
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))  # then constant
    total = args.pretrain_steps + args.extra_steps
    per_epoch = len(blocks) // args.batch_size
    history, started = [], time.time()
    model.train()
    bar = tqdm(total=total, desc="causal LM", unit="step")
    for step in range(total):
        order = list(range(len(blocks)))
        random.Random(args.seed * 1_000_003 + step // per_epoch).shuffle(order)
        slot = step % per_epoch
        ids = blocks[order[slot * args.batch_size : (slot + 1) * args.batch_size]]
        hidden = model.model(input_ids=ids).last_hidden_state[:, :-1]
        logits = hidden @ model.model.embed_tokens.weight[vocab].T
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(vocab)), remap[ids[:, 1:]].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(round(loss.item(), 4))
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step + 1 in (args.pretrain_steps, total):
            name = "lm" if step + 1 == args.pretrain_steps else "lm_plus"
            model.save_pretrained(work / name)
            tokenizer.save_pretrained(work / name)
            log.info("saved %s after %d steps (loss %.3f, %.0fs)", name, step + 1, loss.item(), time.time() - started)
    bar.close()
    return {"steps": total, "saved": {"lm": args.pretrain_steps, "lm_plus": total}, "restricted_vocab": len(vocab),
            "loss_history": history, "seconds": round(time.time() - started, 1)}


def evaluate(model_dir: Path, sets: dict) -> dict:
    from pplx_embed import Embedder
    from pplx_embed.train.evaluation import retrieval_scores

    embedder = Embedder(str(model_dir), dtype="float32")
    return {name: {k: round(v, 4) for k, v in retrieval_scores(embedder, data)["float@full"].items()}
            for name, data in sets.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128, help="pretraining / diffusion sequence length")
    ap.add_argument("--max-length", type=int, default=256, help="model context (max_position_embeddings)")
    ap.add_argument("--batch-size", type=int, default=16, help="pretraining and diffusion batch (sequences)")
    ap.add_argument("--pretrain-steps", type=int, default=250)
    ap.add_argument("--pretrain-lr", type=float, default=2e-3)
    ap.add_argument("--extra-steps", type=int, default=60, help="diffusion steps = extra causal steps of causal_plus")
    ap.add_argument("--diffusion-lr", type=float, default=1e-3)
    ap.add_argument("--pair-steps", type=int, default=80)
    ap.add_argument("--pair-batch", type=int, default=32)
    ap.add_argument("--pair-lr", type=float, default=3e-4)
    ap.add_argument("--pair-doc-length", type=int, default=128)
    ap.add_argument("--eval-queries", type=int, default=200)
    ap.add_argument("--eval-corpus", type=int, default=500)
    ap.add_argument("--arms", default=",".join(ARMS))
    add_run_args(ap, "/tmp/pplx-train-bench/ablation", ROOT / "docs" / "benchmarks" / "train_ablation_diffusion.json")
    args = ap.parse_args()
    arms = args.arms.split(",")
    work = start_run(args)
    timings: dict[str, float] = {}
    started_all = time.time()

    from pplx_embed.model.tokenizer import build_qwen3_tokenizer
    from pplx_embed.train.config import DiffusionConfig, stage_config
    from pplx_embed.train.contrastive import train_stage
    from pplx_embed.train.diffusion import export_encoder, pack_texts, train_diffusion
    from pplx_embed.train.evaluation import load_eval_set

    # ---- 1. causal LM pretraining (next-token prediction) -----------------------------------
    tokenizer = build_qwen3_tokenizer(args.max_length)
    need = (args.pretrain_steps + args.extra_steps) * args.batch_size * args.seq_len
    texts = pretraining_texts(need, tokenizer, args.seed)
    text_file = work / "pretrain.jsonl"
    with text_file.open("w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    blocks = pack_texts(tokenizer, texts, args.seq_len)
    record_file = work / "pretrain.json"
    if not (work / "lm_plus" / "config.json").is_file():
        pre = pretrain_causal(args, work, blocks, tokenizer)
        record_file.write_text(json.dumps(pre))
    pre = json.loads(record_file.read_text())
    timings["causal_pretraining"] = pre["seconds"]
    log.info("pretraining text: %d answers, %d blocks of %d tokens", len(texts), len(blocks), args.seq_len)

    # ---- 2. diffusion continued pretraining (the library stage, unchanged) -------------------
    diffusion_out = work / "diffusion"
    if "diffusion" in arms and not (diffusion_out / "last" / "config.json").is_file():
        t0 = time.time()
        result = train_diffusion(DiffusionConfig(
            model=str(work / "lm"), output=str(diffusion_out), data=str(text_file), seq_len=args.seq_len,
            batch_size=args.batch_size, steps=args.extra_steps, lr=args.diffusion_lr, warmup_steps=10,
            seed=args.seed, log_every=1))
        (work / "diffusion.json").write_text(json.dumps({**result, "seconds": round(time.time() - t0, 1)}))
    diffusion = json.loads((work / "diffusion.json").read_text()) if "diffusion" in arms else None
    if diffusion:
        timings["diffusion_pretraining"] = diffusion["seconds"]

    # ---- 3. the arms as embedding checkpoints ------------------------------------------------
    sources = {"causal": (work / "lm", "causal"), "bidirectional": (work / "lm", "bidirectional"),
               "causal_plus": (work / "lm_plus", "causal")}
    arm_dirs = {}
    for arm in arms:
        if arm == "diffusion":
            arm_dirs[arm] = diffusion_out / "last"
            continue
        arm_dirs[arm] = work / "arms" / arm
        if not (arm_dirs[arm] / "config.json").is_file():
            export_encoder(str(sources[arm][0]), arm_dirs[arm], sources[arm][1])

    # ---- 4. identical contrastive pair training + evaluation ---------------------------------
    rows = [json.loads(line) for line in (DATA / "medquad" / "train.jsonl").open(encoding="utf-8")]
    rows = random.Random(args.seed).sample(rows, args.pair_steps * args.pair_batch)
    pairs_file = work / "pairs.jsonl"
    with pairs_file.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"query": r["query"], "positive": r["positive"]}) + "\n")
    sets = {"medquad/dev": load_eval_set(str(DATA / "medquad" / "dev"), args.eval_queries, args.eval_corpus, args.seed),
            "xquad/en": load_eval_set(str(DATA / "xquad" / "en"))}
    n_params = sum(p.numel() for p in transformers.Qwen3ForCausalLM(causal_config(args)).parameters())

    def write_record() -> None:
        """Print the table and write the JSON (after every arm, so a cut-short run keeps what finished)."""
        timings = dict(base_timings)
        for arm, r in results.items():
            timings[f"{arm}: pairs"] = r["seconds"]["pairs"]
            timings[f"{arm}: eval"] = r["seconds"]["eval"]
        print(f"{'arm':<14}{'loss first10':>13}{'loss last25':>12}{'medquad before':>16}{'after':>8}"
              f"{'xquad before':>14}{'after':>8}")
        for arm, r in results.items():
            print(f"{arm:<14}{r['loss_first10']:>13.4f}{r['loss_last25']:>12.4f}{r['before']['medquad/dev']['ndcg@10']:>16.4f}"
                  f"{r['after']['medquad/dev']['ndcg@10']:>8.4f}{r['before']['xquad/en']['ndcg@10']:>14.4f}"
                  f"{r['after']['xquad/en']['ndcg@10']:>8.4f}")
        record = {
            "benchmark": "train_ablation_diffusion", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": f"{cpu_description()} (CPU only, torch.set_num_threads({args.threads}); "
                      "2-core machine shared with other jobs)",
            "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "settings": {k: v for k, v in vars(args).items() if k not in ("fresh", "out", "work")},
            "model": {"architecture": "Qwen3ForCausalLM", "vocab_size": 151669, "hidden_size": args.hidden,
                      "intermediate_size": 3 * args.hidden, "layers": args.layers, "heads": args.heads,
                      "tie_word_embeddings": True, "parameters": n_params},
            "pretraining": {"data": f"{len(texts)} distinct medquad/train.jsonl answers, packed into {len(blocks)} "
                                    f"blocks of {args.seq_len} tokens", **{k: v for k, v in pre.items()}},
            "diffusion": diffusion and {k: diffusion[k] for k in ("steps", "first_loss", "last_loss", "history",
                                                                  "seconds")},
            "pair_training": {"data": f"{len(rows)} random medquad/train.jsonl pairs (seed {args.seed})",
                              "batch_size": args.pair_batch, "steps": args.pair_steps, "lr": args.pair_lr,
                              "doc_max_length": args.pair_doc_length, "query_max_length": 32, "temperature": 0.05},
            "eval": {"medquad/dev": f"{len(sets['medquad/dev'].query_ids)} random queries (seed {args.seed}), "
                                    f"corpus {len(sets['medquad/dev'].corpus_ids)} = all their relevant answers + "
                                    "random others",
                     "xquad/en": f"full ({len(sets['xquad/en'].query_ids)} queries, "
                                 f"{len(sets['xquad/en'].corpus_ids)} paragraphs)",
                     "note": "float32 full dim, cosine, texts right-truncated at the model's 256 tokens, "
                             "runtime engine"},
            "arms": results, "seconds": {**timings, "total_this_invocation": round(time.time() - started_all, 1)},
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2))
        print(f"wrote {args.out}")

    base_timings = dict(timings)
    results = {}
    for arm in arms:
        arm_file = work / f"arm-{arm}.json"
        if arm_file.is_file():
            results[arm] = json.loads(arm_file.read_text())
            continue
        t0 = time.time()
        before = evaluate(arm_dirs[arm], sets)
        t1 = time.time()
        out = work / "pairs" / arm
        shutil.rmtree(out, ignore_errors=True)
        summary = train_stage(stage_config(
            stage="pairs", model=str(arm_dirs[arm]), output=str(out), batch_size=args.pair_batch,
            max_length=args.pair_doc_length, query_max_length=32, seed=args.seed, log_every=1,
            loss={"temperature": 0.05}, optim={"lr": args.pair_lr, "warmup_steps": 15},
            phases=[{"data": str(pairs_file), "name": "medquad"}]))
        t2 = time.time()
        after = evaluate(out / "last", sets)
        losses = [r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]
        results[arm] = {"checkpoint": str(arm_dirs[arm]), "steps": summary["steps"],
                        "loss_curve": [round(x, 4) for x in losses],
                        "loss_first10": round(sum(losses[:10]) / len(losses[:10]), 4),
                        "loss_last25": round(sum(losses[-25:]) / len(losses[-25:]), 4),
                        "before": before, "after": after,
                        "seconds": {"eval": round(t1 - t0 + time.time() - t2, 1), "pairs": round(t2 - t1, 1)}}
        arm_file.write_text(json.dumps(results[arm]))
        write_record()
        log.info("%s: pair loss %.3f -> %.3f; nDCG@10 medquad %.4f -> %.4f, xquad/en %.4f -> %.4f", arm,
                 results[arm]["loss_first10"], results[arm]["loss_last25"], before["medquad/dev"]["ndcg@10"],
                 after["medquad/dev"]["ndcg@10"], before["xquad/en"]["ndcg@10"], after["xquad/en"]["ndcg@10"])
    write_record()
    return 0


if __name__ == "__main__":
    sys.exit(main())
