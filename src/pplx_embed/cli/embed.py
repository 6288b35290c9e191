"""``pplx-embed embed`` (texts from a file into JSONL / NPY / Parquet), ``info`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pplx_embed.atomic import atomic_path, write_text
from pplx_embed.checks.precision import QUANTIZATIONS
from pplx_embed.cli.common import add_model_args, load_embedder, read_texts
from pplx_embed.errors import InputError
from pplx_embed.options import EmbedderOptions

FORMATS = (".jsonl", ".json", ".npy", ".parquet")


def _write_embeddings(path: str, texts: list[str], vectors, model: str, quantization: str, engine: str) -> None:
    """Write ``vectors`` in the format the suffix of ``path`` names; the file appears only once complete.

    Every format records the model, the output quantization and the engine (``backend:dtype``) that computed them."""
    import numpy as np

    out = Path(path)
    with atomic_path(out) as tmp:
        if out.suffix == ".npy":
            with tmp.open("wb") as f:
                np.save(f, vectors)
        elif out.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            column = pa.array([v.tolist() for v in vectors], type=pa.list_(pa.from_numpy_dtype(vectors.dtype)))
            table = pa.table({"text": texts, "embedding": column})
            meta = {"model": model, "quantization": quantization, "engine": engine}
            pq.write_table(table.replace_schema_metadata(meta), tmp)
        else:
            with tmp.open("w", encoding="utf-8") as f:
                for text, vector in zip(texts, vectors):
                    f.write(json.dumps({"text": text, "embedding": vector.tolist(), "model": model,
                                        "quantization": quantization, "engine": engine}, ensure_ascii=False) + "\n")
    if out.suffix == ".npy":
        meta = {"model": model, "quantization": quantization, "engine": engine, "shape": list(vectors.shape),
                "dtype": str(vectors.dtype)}
        write_text(out.with_suffix(".json"), json.dumps(meta))


def cmd_embed(args: argparse.Namespace) -> int:
    if Path(args.output).suffix not in FORMATS:
        raise InputError(f"unknown output format {Path(args.output).suffix!r}: use .jsonl, .npy or .parquet")
    texts = read_texts(args.input, args.field)
    embedder = load_embedder(args)
    vectors = embedder.encode(texts, quantization=args.quantization, dimensions=args.dimensions,
                              show_progress_bar=not args.quiet, truncation=args.truncation)
    engine = embedder.engine_info.to_dict()
    _write_embeddings(args.output, texts, vectors, embedder.name, args.quantization,
                      f"{engine['backend']}:{engine['dtype']}")
    print(f"wrote {len(texts)} embeddings {tuple(vectors.shape)} {vectors.dtype} from {embedder.name} "
          f"to {args.output}", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    args.model = args.model_name or args.model
    print(json.dumps(load_embedder(args).info(), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pplx_embed import demo

    demo.run(EmbedderOptions.from_args(args), Path(args.output), Path(args.eval_data))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    embed = sub.add_parser("embed", help="embed texts from a file into JSONL / NPY / Parquet")
    embed.add_argument("input", help="input .jsonl (objects with a text field) or text file (one text per line); "
                                     "- for stdin")
    embed.add_argument("--output", "-o", required=True, help="output file: .jsonl, .npy or .parquet")
    embed.add_argument("--field", default="text", help="JSONL field holding the text (default: text)")
    embed.add_argument("--quantization", "-q", default="float", choices=QUANTIZATIONS)
    embed.add_argument("--dimensions", "-d", type=int, default=None, help="Matryoshka dimensions (128..full)")
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_args(embed)
    embed.set_defaults(func=cmd_embed)

    info = sub.add_parser("info", help="dimensions, context, parameters and dtype of a model")
    info.add_argument("model_name", nargs="?", default=None, metavar="MODEL")
    add_model_args(info)
    info.set_defaults(func=cmd_info)

    demo = sub.add_parser("demo", help="embed, compare precisions and late-chunk on the default model")
    demo.add_argument("--output", default="out/demo", help="where the index and eval report go (default out/demo)")
    demo.add_argument("--eval-data", default="../shared/data/xquad/en",
                      help="BEIR data set for the eval report (default ../shared/data/xquad/en; skipped if absent)")
    add_model_args(demo)
    demo.set_defaults(func=cmd_demo)
