"""``pplx-embed index create|add|search|stats|delete`` and ``pplx-embed batch``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

from pplx_embed.cli.common import add_model_args, field_values, load_embedder
from pplx_embed.errors import InputError as CLIError
from pplx_embed.jsonl import iter_jsonl, iter_lines
from pplx_embed.options import EmbedderOptions


def read_rows(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file (``-`` = stdin)."""
    return iter_jsonl(path, CLIError)


def _item(path: str, number: int, row: dict, args: argparse.Namespace) -> tuple[str, Any, dict]:
    """(id, text or chunks, metadata) of one input row."""
    id_ = row.get(args.id_field, row.get("_id") if args.id_field == "id" else None)
    if isinstance(id_, int) and not isinstance(id_, bool):
        id_ = str(id_)
    if not isinstance(id_, str) or not id_:
        raise CLIError(f"{path}:{number}: missing a string {args.id_field!r} field")
    content = row.get(args.chunks_field if args.documents else args.text_field)
    if args.documents:
        if not isinstance(content, list) or not content or not all(isinstance(c, str) for c in content):
            raise CLIError(f"{path}:{number}: expected {args.chunks_field!r}: a non-empty list of strings")
    elif not isinstance(content, str) or not content.strip():
        raise CLIError(f"{path}:{number}: expected a non-empty string {args.text_field!r} field")
    if isinstance(row.get("metadata"), dict):
        metadata = row["metadata"]
    else:
        skip = {args.id_field, "_id", args.text_field, args.chunks_field}
        metadata = {k: v for k, v in row.items() if k not in skip}
    return id_, content, metadata


def _open(args: argparse.Namespace, with_model: bool, queries: bool = False):
    """The index at ``args.index``; ``with_model``: with the embedder of ``--model``, by default the index's
    model (``queries``: its query model, when it records one)."""
    from pplx_embed.index import Index, IndexNotFoundError

    try:
        index = Index.open(args.index)
    except IndexNotFoundError as exc:
        raise CLIError(str(exc)) from None
    if with_model:
        if args.model is None:
            args.model = (index.query_model if queries else None) or index.model
        index.use(load_embedder(args))  # refuses another model's embedder
    return index


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number


def _actors(value: str) -> int | tuple[int, int]:
    """``N`` or ``MIN:MAX`` actors."""
    low, colon, high = value.partition(":")
    if not colon:
        return _positive(value)
    low_n, high_n = _positive(low), _positive(high)
    if low_n > high_n:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX with MIN <= MAX, got {value!r}")
    return low_n, high_n


def cmd_create(args: argparse.Namespace) -> int:
    from pplx_embed.index import Index
    from pplx_embed.model.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(EmbedderOptions.from_args(args).model)
    query_model = None
    if args.query_model:
        query = load_checkpoint(args.query_model)
        if query.dimension != checkpoint.dimension:
            raise CLIError(f"--query-model {query.name} embeds {query.dimension} dimensions; "
                           f"{checkpoint.name} embeds {checkpoint.dimension}")
        query_model = query.name
    try:
        index = Index.create(args.index, checkpoint.name, args.dimensions,
                             full_dimension=checkpoint.dimension, store_float=args.store_float,
                             contextual=args.contextual or checkpoint.is_contextual, first_stage=args.first_stage,
                             query_model=query_model)
    except FileExistsError as exc:
        raise CLIError(str(exc)) from None
    print(json.dumps(index.info()))
    index.close()
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    rows = list(read_rows(args.input))  # the whole input is checked before the model loads
    if not rows:
        raise CLIError(f"{args.input} holds no rows")
    items = [_item(args.input, number, row, args) for number, row in rows]
    seen: set[str] = set()
    for (number, _), (id_, _, _) in zip(rows, items):
        if id_ in seen:
            raise CLIError(f"{args.input}:{number}: id {id_!r} repeats")
        seen.add(id_)
    index = _open(args, with_model=True)
    write = index.upsert if args.upsert else index.add
    done = 0
    with tqdm(total=len(items), unit="doc" if args.documents else "text", disable=args.quiet,
              desc=f"indexing into {args.index}") as bar:
        for start in range(0, len(items), args.batch_size):
            part = items[start : start + args.batch_size]
            ids = [p[0] for p in part]
            if args.documents:
                done += index.add_documents([p[1] for p in part], ids, metadata=[p[2] for p in part],
                                            truncation=args.truncation)
            else:
                done += write([p[1] for p in part], ids=ids, metadata=[p[2] for p in part],
                              truncation=args.truncation)
            bar.update(len(part))
    print(f"added {done} {'chunks' if args.documents else 'items'}; the index holds {len(index)}", file=sys.stderr)
    if index.needs_compaction:
        print("compacting: building the first stage the index's size calls for", file=sys.stderr)
        index.compact()
        from pplx_embed.index.embedded import PROBE_SHARE

        stats = index.stats()
        if stats.get("probe_share") is not None:
            spilled = f" ({stats['spilled']:.0%} of rows also in their second-nearest list)" if stats["spilled"] else ""
            print(f"first stage: {stats['lists']} inverted lists{spilled}; a query probes {stats['nprobe']}, which "
                  f"hold {stats['probe_share']:.1%} of sample rows' true top 10"
                  + ("" if stats["probe_share"] >= PROBE_SHARE else
                     " (below 99%: `index search --nprobe N` probes more lists for more recall)"), file=sys.stderr)
    index.close()
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    queries = list(args.query)
    for number, row in read_rows(args.queries) if args.queries else ():
        query = row.get("text", row.get("query"))
        if not isinstance(query, str):
            raise CLIError(f"{args.queries}:{number}: expected a string 'text' (or 'query') field")
        queries.append(query)
    if not queries:
        raise CLIError("give a query, or --queries FILE.jsonl")
    where = field_values(args.filter, "--filter")
    index = _open(args, with_model=True, queries=True)
    if args.nprobe is not None:
        index.nprobe = args.nprobe
    results = index.search_many(queries, args.k, filter=where,
                                candidates=args.candidates, rescore=args.rescore)
    for query, hits in zip(queries, results):
        print(json.dumps({"query": query, "model": index.model, "query_model": index.query_model or index.model,
                          "hits": [h.to_dict() for h in hits]}, ensure_ascii=False))
    index.close()
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    index = _open(args, with_model=False)
    print(json.dumps(index.stats(), indent=2))
    index.close()
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    index = _open(args, with_model=False)
    print(json.dumps(index.check()))
    index.close()
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    ids = list(args.ids)
    if args.ids_file:
        ids += [line.strip() for _, line in iter_lines(args.ids_file, CLIError) if line.strip()]
    if not ids and not args.compact:
        raise CLIError("give ids to delete (or --ids-file, or --compact)")
    index = _open(args, with_model=False)
    removed = index.delete(ids) if ids else 0
    dropped = index.compact() if args.compact else 0
    print(json.dumps({"deleted": removed, "not_found": len(set(ids)) - removed, "compacted_rows": dropped,
                      "items": len(index)}))
    index.close()
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from pplx_embed.index.batch import embed_files

    written = embed_files(args.input, args.output, options=EmbedderOptions.from_args(args), field=args.field,
                          quantizations=tuple(args.quantization or ("int8", "binary")), dimensions=args.dimensions,
                          rows_per_file=args.rows_per_file, address=args.ray_address, num_cpus=args.num_cpus,
                          num_gpus=args.num_gpus, actors=args.actors, actor_cpus=args.actor_cpus,
                          show_progress_bar=not args.quiet)
    if args.index:
        from pplx_embed.index.batch import ingest_parts

        written.update(ingest_parts(args.output, args.index, id_field=args.id_field, text_field=args.field,
                                    show_progress_bar=not args.quiet))
    print(json.dumps(written))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    index = sub.add_parser("index", help="create, fill and search a persistent vector index")
    isub = index.add_subparsers(dest="index_command", required=True, metavar="ACTION")

    create = isub.add_parser("create", help="create an empty index for a model")
    create.add_argument("index", help="index directory, milvus:FILE.db#collection, milvus://host:port/collection, "
                                      "postgresql://user@host/db#table or pgserver:DATADIR#table")
    create.add_argument("--dimensions", "-d", type=int, default=None, help="Matryoshka dimensions (default: full)")
    create.add_argument("--store-float", action="store_true", help="also keep float32 vectors (float rescoring)")
    create.add_argument("--first-stage", choices=("auto", "flat", "ivf", "hnsw"), default=None,
                        help="auto: chosen by size, re-trained by compaction as the index grows (the embedded "
                             "default); flat: exact Hamming scan (the Milvus default); ivf: an inverted file; "
                             "hnsw: the pgvector backend's (its default)")
    create.add_argument("--query-model", default=None,
                        help="embed queries with this model (same dimension), e.g. pplx-embed-v1-0.6b for an index "
                             "of pplx-embed-context-v1-0.6b chunks")
    create.add_argument("--contextual", action="store_true",
                        help="a late-chunking index: queries are embedded as one-chunk documents")
    add_model_args(create)
    create.set_defaults(func=cmd_create)

    add = isub.add_parser("add", help="embed and add JSONL rows (id, text, metadata); atomic per batch")
    add.add_argument("index")
    add.add_argument("input", help="JSONL: {\"id\", \"text\", \"metadata\"?} per line (other fields become "
                                   "metadata); with --documents {\"id\", \"chunks\": [...]}; - for stdin")
    add.add_argument("--id-field", default="id", help="field holding the id (default: id, else _id)")
    add.add_argument("--text-field", default="text")
    add.add_argument("--documents", action="store_true", help="rows are documents of chunks (late chunking)")
    add.add_argument("--chunks-field", default="chunks")
    add.add_argument("--upsert", action="store_true", help="replace items whose id exists (default: refuse)")
    add.add_argument("--batch-size", type=_positive, default=256, help="rows per atomic batch (default 256)")
    add.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_args(add)
    add.set_defaults(func=cmd_add)

    search = isub.add_parser("search", help="search with text queries; prints one JSON line per query")
    search.add_argument("index")
    search.add_argument("query", nargs="*", help="query texts")
    search.add_argument("--queries", help="JSONL file of queries ({\"text\"} per line)")
    search.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    search.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                        help="keep items whose metadata KEY equals VALUE (JSON or string); repeatable")
    search.add_argument("--candidates", type=_positive, default=None,
                        help="first-stage candidates (default max(100, 10k))")
    search.add_argument("--rescore", choices=("int8", "float", "none"), default="int8")
    search.add_argument("--nprobe", type=_positive, default=None,
                        help="inverted lists probed per query when the first stage is an inverted file (default: as "
                             "compaction calibrated it, see `index stats`)")
    add_model_args(search)
    search.set_defaults(func=cmd_search)

    stats = isub.add_parser("stats", help="model, dimensions, counts and sizes of an index")
    stats.add_argument("index")
    stats.set_defaults(func=cmd_stats)

    check = isub.add_parser("check", help="verify every checksum of an index (exit 2 with one line if damaged)")
    check.add_argument("index")
    check.set_defaults(func=cmd_check)

    delete = isub.add_parser("delete", help="delete items by id (and optionally compact)")
    delete.add_argument("index")
    delete.add_argument("ids", nargs="*", help="ids to delete")
    delete.add_argument("--ids-file", help="file with one id per line")
    delete.add_argument("--compact", action="store_true", help="then rewrite the vector files without tombstones")
    delete.set_defaults(func=cmd_delete)

    batch = sub.add_parser("batch", help="distributed batch embedding with Ray Data → Parquet (int8/binary columns)")
    batch.add_argument("input", nargs="+", help="input .jsonl or .parquet files (or directories of them)")
    batch.add_argument("--output", "-o", required=True, help="output directory of Parquet parts (resumable)")
    batch.add_argument("--field", default="text", help="text column (default: text)")
    batch.add_argument("--quantization", "-q", action="append", choices=("int8", "binary", "float"),
                       default=None, help="columns to write (repeatable; default int8 and binary)")
    batch.add_argument("--dimensions", "-d", type=int, default=None)
    batch.add_argument("--rows-per-file", type=int, default=4096, help="rows per output part (default 4096)")
    batch.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="run on this Ray cluster (e.g. head:6379; its nodes must see the input and output paths) "
                            "instead of starting Ray on this machine")
    batch.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray cluster")
    batch.add_argument("--num-gpus", type=float, default=0, help="GPUs per embedding actor (0: CPU)")
    batch.add_argument("--actors", type=_actors, default=None, metavar="N|MIN:MAX",
                       help="embedding actors: a fixed pool, or MIN:MAX for Ray Data to scale between (default: one "
                            "per GPU share with --num-gpus, else one)")
    batch.add_argument("--actor-cpus", type=_positive_float, default=1.0, metavar="N",
                       help="CPUs (and engine threads) per actor (default 1)")
    batch.add_argument("--index", default=None,
                       help="also upsert the parts into this index (directory or milvus:...; created when missing)")
    batch.add_argument("--id-field", default="id", help="id column for --index (default: id, else <file>:<row>)")
    batch.add_argument("--quiet", action="store_true")
    add_model_args(batch)
    batch.set_defaults(func=cmd_batch, quantization=None)
