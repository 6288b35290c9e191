"""``pplx-embed`` command line: embed, info, and the commands of each subsystem.

Each subsystem package (``serve``, ``index``, ``eval``, ``train``, ``engine``) keeps its commands in
its own ``cli.py`` with a ``register(subparsers)`` function; this module wires them together and
turns every user error into one clear line on stderr and a non-zero exit, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from pplx_embed.model.quantization import QUANTIZATIONS
from pplx_embed.options import EmbedderOptions

SUBSYSTEMS = ("pplx_embed.engine.cli", "pplx_embed.serve.cli", "pplx_embed.index.cli",
              "pplx_embed.eval.cli", "pplx_embed.train.cli")


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The :class:`~pplx_embed.options.EmbedderOptions` flags: how every command loads a model."""
    EmbedderOptions.add_arguments(parser)


def load_embedder(args: argparse.Namespace):
    """An :class:`~pplx_embed.Embedder` from the ``add_model_args`` options (environment filling gaps)."""
    return EmbedderOptions.from_args(args).build()


def read_texts(path: str, field: str = "text") -> list[str]:
    """Texts from a ``.jsonl`` file (``field`` of each object, or a bare string per line) or a text file (one per line)."""
    if path == "-":
        lines = sys.stdin.read().splitlines()
        name = "stdin"
    else:
        p = Path(path)
        if not p.is_file():
            raise CLIError(f"input file not found: {path}")
        lines = p.read_text(encoding="utf-8").splitlines()
        name = path
    is_jsonl = name.endswith((".jsonl", ".json"))
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not is_jsonl:
            texts.append(line)
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CLIError(f"{name}:{number}: not valid JSON ({exc.msg})") from None
        value = row if isinstance(row, str) else row.get(field) if isinstance(row, dict) else None
        if not isinstance(value, str):
            raise CLIError(f"{name}:{number}: expected a string or an object with a string {field!r} field")
        texts.append(value)
    if not texts:
        raise CLIError(f"{name} holds no texts")
    return texts


def _write_embeddings(path: str, texts: list[str], vectors, model: str, quantization: str) -> None:
    import numpy as np

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, vectors)
        out.with_suffix(".json").write_text(json.dumps(
            {"model": model, "quantization": quantization, "shape": list(vectors.shape), "dtype": str(vectors.dtype)}))
    elif out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        column = pa.array([v.tolist() for v in vectors], type=pa.list_(pa.from_numpy_dtype(vectors.dtype)))
        table = pa.table({"text": texts, "embedding": column})
        table = table.replace_schema_metadata({"model": model, "quantization": quantization})
        pq.write_table(table, out)
    elif out.suffix in (".jsonl", ".json"):
        with out.open("w", encoding="utf-8") as f:
            for text, vector in zip(texts, vectors):
                f.write(json.dumps({"text": text, "embedding": vector.tolist(), "model": model,
                                    "quantization": quantization}, ensure_ascii=False) + "\n")
    else:
        raise CLIError(f"unknown output format {out.suffix!r}: use .jsonl, .npy or .parquet")


def cmd_embed(args: argparse.Namespace) -> int:
    if Path(args.output).suffix not in (".jsonl", ".json", ".npy", ".parquet"):
        raise CLIError(f"unknown output format {Path(args.output).suffix!r}: use .jsonl, .npy or .parquet")
    texts = read_texts(args.input, args.field)
    embedder = load_embedder(args)
    vectors = embedder.encode(texts, quantization=args.quantization, dimensions=args.dimensions,
                              show_progress_bar=not args.quiet, truncation=args.truncation)
    _write_embeddings(args.output, texts, vectors, embedder.name, args.quantization)
    print(f"wrote {len(texts)} embeddings {tuple(vectors.shape)} {vectors.dtype} from {embedder.name} to {args.output}",
          file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    args.model = args.model_name or args.model
    print(json.dumps(load_embedder(args).info(), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pplx_embed import demo

    demo.run(args.model, Path(args.output), Path(args.eval_data))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pplx-embed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    embed = sub.add_parser("embed", help="embed texts from a file into JSONL / NPY / Parquet")
    embed.add_argument("input", help="input .jsonl (objects with a text field) or text file (one text per line); - for stdin")
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
    demo.add_argument("--model", "-m", default=None, help="model to demo (default: the built-in default)")
    demo.add_argument("--output", default="out/demo", help="where the index and eval report go (default out/demo)")
    demo.add_argument("--eval-data", default="../shared/data/xquad/en",
                      help="BEIR data set for the eval report (default ../shared/data/xquad/en; skipped if absent)")
    demo.set_defaults(func=cmd_demo)

    for module in SUBSYSTEMS:
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CLIError, ValueError, TypeError, FileNotFoundError, PermissionError) as exc:
        print(f"pplx-embed: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pplx-embed: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
