"""Distributed batch embedding with Ray Data: JSONL / Parquet in, Parquet parts with int8/binary columns out.

The input rows are cut into fixed shards (``rows_per_file`` rows of one input file); each shard
becomes one output part ``part-<file>-<first row>.parquet``, written atomically (temporary file,
then rename). A Ray Data pipeline maps the shards over an autoscaling pool of embedding actors
(``actors=(min, max)``; one model per actor; ``num_gpus`` > 0 puts each actor on a GPU) on a local Ray, or on
the cluster at ``address``. Each part records the model, dimensions and quantizations in its schema
metadata; ``pplx_embed.index.batch.read_parts`` loads them back.

Resuming: ``_manifest.json`` in the output holds the run's key (model, dimensions, quantizations, text field,
rows per part, truncation) and every finished part with the input it came from (path, first row, rows, the
file's size and modification time). The driver records a part as soon as its actor has written it, so a run
killed at any point loses at most the parts being computed: running the same command again computes only the
parts the manifest does not hold (or whose input changed since). A different key in the manifest is refused:
one output directory holds one embedding of its inputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pplx_embed.atomic import atomic_path, write_text
from pplx_embed.errors import InputError
from pplx_embed.options import EmbedderOptions

COLUMNS = ("int8", "binary", "float")
MANIFEST = "_manifest.json"


def _input_files(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix in (".jsonl", ".parquet"))
        elif p.is_file():
            if p.suffix not in (".jsonl", ".parquet"):
                raise InputError(f"{item}: batch input must be .jsonl or .parquet")
            files.append(p)
        else:
            raise InputError(f"input not found: {item}")
    if not files:
        raise InputError("no .jsonl or .parquet input files")
    return [f.absolute() for f in files]


def _read_table(path: Path, field: str):
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    table = pq.read_table(path) if path.suffix == ".parquet" else pj.read_json(path)
    if field not in table.column_names:
        raise InputError(f"{path}: no {field!r} column (columns: {', '.join(table.column_names)})")
    return table


def _stamp(path: Path) -> list[int]:
    """What tells that an input file changed: its size and modification time."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _shards(files: list[Path], field: str, rows_per_file: int) -> list[dict[str, Any]]:
    shards = []
    for number, path in enumerate(files):
        rows = _read_table(path, field).num_rows
        for start in range(0, rows, rows_per_file):
            shards.append({"file": str(path), "start": start, "stop": min(rows, start + rows_per_file),
                           "part": f"part-{number:05d}-{start:012d}.parquet", "input": _stamp(path)})
    return shards


def _record(shard: dict[str, Any]) -> dict[str, Any]:
    return {"source": shard["file"], "start": shard["start"], "rows": shard["stop"] - shard["start"],
            "input": shard["input"]}


def _run_key(options: EmbedderOptions, field: str, quantizations: tuple[str, ...], dimensions: int | None,
             rows_per_file: int) -> dict[str, Any]:
    """What decides the parts' contents: a run with another key must not reuse them."""
    from pplx_embed.model.checkpoint import default_model

    return {"model": options.model or default_model(), "dimensions": dimensions or "full",
            "quantizations": list(quantizations), "field": field, "rows_per_file": rows_per_file,
            "truncation": options.truncation or "right"}


def _read_manifest(out: Path, key: dict[str, Any]) -> dict[str, Any]:
    path = out / MANIFEST
    if not path.exists():
        return {"key": key, "parts": {}}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        recorded = manifest["key"]
        parts = dict(manifest["parts"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is not a batch manifest ({exc}); remove it to start over") from None
    if recorded != key:
        differ = ", ".join(f"{k} {recorded.get(k)!r} (now {v!r})" for k, v in key.items() if recorded.get(k) != v)
        raise InputError(f"{out} holds another run's embeddings: {differ}; write to another --output directory")
    return {"key": key, "parts": parts}


class EmbedShards:
    """A Ray Data actor: loads the model once, embeds whole shards and writes their parts.

    Over-long texts are cut from the right unless the options ask for ``left``.
    """

    def __init__(self, options: EmbedderOptions, output: str, field: str, quantizations: tuple[str, ...],
                 dimensions: int | None):
        from pplx_embed.embedder import Embedder

        self.embedder = Embedder(options=options)
        self.truncation = options.truncation or "right"
        self.output, self.field, self.quantizations, self.dimensions = Path(output), field, quantizations, dimensions

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        done = []
        for file, start, stop, part in zip(batch["file"], batch["start"], batch["stop"], batch["part"]):
            table = _read_table(Path(file), self.field).slice(int(start), int(stop) - int(start))
            texts = table.column(self.field).to_pylist()
            outputs = self.embedder.encode_all(texts, self.quantizations, self.dimensions, truncation=self.truncation)
            columns = {name: table.column(name) for name in table.column_names}
            for q, codes in outputs.items():
                if q == "binary":
                    columns[q] = pa.array([row.tobytes() for row in codes], type=pa.binary(codes.shape[1]))
                else:
                    columns[q] = pa.FixedSizeListArray.from_arrays(pa.array(codes.ravel()), codes.shape[1])
            out = pa.table(columns).replace_schema_metadata({
                "model": self.embedder.name, "dimensions": str(self.dimensions or self.embedder.dimension),
                "quantizations": ",".join(self.quantizations), "source": str(file), "start": str(start)})
            with atomic_path(self.output / part) as tmp:  # a part exists only once it is complete
                pq.write_table(out, tmp)
            done.append(part)
        return {"part": done}


def embed_files(inputs: list[str], output: str, *, options: EmbedderOptions | None = None, field: str = "text",
                quantizations: tuple[str, ...] = ("int8", "binary"), dimensions: int | None = None,
                rows_per_file: int = 4096, address: str | None = None, num_cpus: int | None = None,
                num_gpus: float = 0, actors: int | tuple[int, int] | None = None, actor_cpus: float = 1,
                show_progress_bar: bool = True) -> dict[str, Any]:
    """Embed every row's ``field`` into Parquet parts under ``output``; skips the parts the manifest holds.

    Every actor loads the model of ``options`` (default: :meth:`EmbedderOptions.from_env`). ``address``: a Ray
    cluster to run on (its nodes must see the inputs and ``output`` at the same paths), else Ray starts on this
    machine with ``num_cpus``. ``actors``: a pool size or ``(min, max)`` for Ray Data to scale between (default:
    one per GPU share with ``num_gpus``, else one), each actor taking ``actor_cpus`` CPUs (and as many threads).
    """
    options = options or EmbedderOptions.from_env()
    for q in quantizations:
        if q not in COLUMNS:
            raise InputError(f"unknown batch quantization {q!r}; choose from {', '.join(COLUMNS)}")
    if rows_per_file < 1:
        raise InputError("rows_per_file must be positive")
    low, high = (actors, actors) if isinstance(actors, int) else actors or (None, None)
    if low is not None and not 1 <= low <= high:
        raise InputError(f"actors must be a positive count or MIN:MAX with 1 <= MIN <= MAX, got {actors!r}")
    if options.model and Path(options.model).expanduser().is_dir():  # the actors may run in another directory
        options = options.replace(model=os.path.abspath(Path(options.model).expanduser()))
    files = _input_files(list(inputs))
    out = Path(output).absolute()
    manifest = _read_manifest(out, _run_key(options, field, tuple(quantizations), dimensions, rows_per_file))
    out.mkdir(parents=True, exist_ok=True)
    shards = _shards(files, field, rows_per_file)
    todo = [s for s in shards if manifest["parts"].get(s["part"]) != _record(s) or not (out / s["part"]).exists()]
    redo = {s["part"] for s in todo}
    manifest["parts"] = {s["part"]: _record(s) for s in shards if s["part"] not in redo}  # this run's inputs only
    summary = {"output": str(out), "parts": len(shards), "skipped": len(shards) - len(todo), "written": 0}
    write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    if not todo:
        return summary
    summary["written"] = _run(todo, out, manifest, options, field, tuple(quantizations), dimensions, address,
                              num_cpus, num_gpus, (low, high), actor_cpus, show_progress_bar)
    return summary


def _run(todo: list[dict[str, Any]], out: Path, manifest: dict[str, Any], options: EmbedderOptions, field: str,
         quantizations: tuple[str, ...], dimensions: int | None, address: str | None, num_cpus: int | None,
         num_gpus: float, actors: tuple[int | None, int | None], actor_cpus: float, show_progress_bar: bool) -> int:
    """Map ``todo`` over the actor pool, recording each part in the manifest as it lands; parts written."""
    import ray

    started = not ray.is_initialized()
    if started:
        env = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}
        ray.init(address=address or "local", num_cpus=None if address else num_cpus,
                 include_dashboard=False if not address else None, log_to_driver=False,
                 runtime_env={"env_vars": env})
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = show_progress_bar
        low, high = actors
        if low is None:  # one actor per GPU share, else one (torch uses every CPU thread it is given)
            low = high = max(1, int(ray.cluster_resources().get("GPU", 0) / num_gpus)) if num_gpus else 1
        threads = str(max(1, int(actor_cpus)))
        by_part = {s["part"]: s for s in todo}
        results = ray.data.from_items([{k: v for k, v in s.items() if k != "input"} for s in todo],
                                      override_num_blocks=len(todo)).map_batches(
            EmbedShards, batch_size=1, compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
            num_gpus=num_gpus or None, num_cpus=actor_cpus,
            runtime_env={"env_vars": {"PPLX_EMBED_THREADS": threads, "OMP_NUM_THREADS": threads}},
            fn_constructor_kwargs={"options": options, "output": str(out), "field": field,
                                   "quantizations": quantizations, "dimensions": dimensions})
        written = 0
        for row in results.iter_rows():  # as each part lands: record it, so a killed run keeps it
            manifest["parts"][row["part"]] = _record(by_part[row["part"]])
            write_text(out / MANIFEST, json.dumps(manifest, indent=1))
            written += 1
        return written
    finally:
        if started:
            ray.shutdown()


def _parts(output: str) -> list[Path]:
    """The finished parts, in input order: those the manifest holds (a part file it does not hold is one a
    killed run left unrecorded), or every part file of an output without a manifest."""
    out = Path(output)
    if (out / MANIFEST).exists():
        parts = [out / name for name in sorted(json.loads((out / MANIFEST).read_text(encoding="utf-8"))["parts"])]
    else:
        parts = sorted(out.glob("part-*.parquet"))
    if not parts:
        raise InputError(f"no parts in {output}")
    return parts


def _metadata(schema) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}


def read_parts(output: str) -> tuple[Any, dict[str, str]]:
    """All parts under ``output`` as one Arrow table (in input order) and the recorded metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(p) for p in _parts(output)]
    meta = _metadata(tables[0].schema)
    return pa.concat_tables([t.replace_schema_metadata(None) for t in tables]), \
        {k: meta[k] for k in ("model", "dimensions", "quantizations") if k in meta}


def ingest_parts(output: str, location: str, *, id_field: str = "id", text_field: str = "text",
                 show_progress_bar: bool = True) -> dict[str, Any]:
    """Upsert every part under ``output`` into the store at ``location`` (created when missing), part by part.

    Each part is one atomic upsert of its int8 and binary codes (float, when the store keeps floats), so
    running it again after an interruption is safe. Ids come from ``id_field``, else ``<source stem>:<row>``;
    the text is kept, and the other scalar columns become metadata. An embedded index that has outgrown its
    first stage is compacted at the end (which trains the one its size calls for).
    """
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from pplx_embed.index import Index, IndexNotFoundError

    parts = _parts(output)
    first = _metadata(pq.read_schema(parts[0]))
    try:
        store = Index.open(location)
    except IndexNotFoundError:
        store = Index.create(location, first["model"], int(first["dimensions"]))
    rows = 0
    try:
        for part in tqdm(parts, desc="indexing parts", unit="part", disable=not show_progress_bar):
            table = pq.read_table(part)
            meta = _metadata(table.schema)
            n = table.num_rows
            if id_field in table.column_names:
                ids = [str(i) for i in table.column(id_field).to_pylist()]
            else:
                ids = [f"{Path(meta['source']).stem}:{int(meta['start']) + i}" for i in range(n)]
            texts = table.column(text_field).to_pylist() if text_field in table.column_names else None
            extra = [c for c in table.column_names if c not in (id_field, text_field, *COLUMNS)
                     and (table.schema.field(c).type.num_fields == 0)]
            metadata = table.select(extra).to_pylist() if extra else None
            if store.store_float:
                if "float" not in table.column_names:
                    raise InputError(f"{location} keeps float vectors; embed with -q float to index these parts")
                store.upsert(texts, ids=ids, vectors=_matrix(table, "float", np.float32), metadata=metadata,
                             model=meta.get("model"))
            else:
                for needed in ("int8", "binary"):
                    if needed not in table.column_names:
                        raise InputError(f"{part.name} has no {needed} column; embed with -q int8 -q binary")
                binary = np.frombuffer(b"".join(table.column("binary").to_pylist()), np.uint8).reshape(n, -1)
                store.upsert_codes(ids, _matrix(table, "int8", np.int8), binary, texts=texts, metadata=metadata,
                                   model=meta.get("model"))
            rows += n
        if store.needs_compaction:
            store.compact()  # the first stage the index's new size calls for
        return {"index": str(location), "indexed_rows": rows, "items": len(store)}
    finally:
        store.close()


def _matrix(table, column: str, dtype) -> np.ndarray:
    """A fixed-size-list column as an [n, dim] array."""
    values = table.column(column).combine_chunks()
    return values.flatten().to_numpy(zero_copy_only=False).astype(dtype).reshape(len(values), -1)
