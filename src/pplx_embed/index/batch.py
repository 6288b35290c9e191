"""Distributed batch embedding with Ray Data: JSONL / Parquet in, Parquet parts with int8/binary columns out.

The input rows are cut into fixed shards (``rows_per_file`` rows of one input file); each shard
becomes one output part ``part-<file>-<first row>.parquet``, written atomically (temporary file,
then rename). A Ray Data pipeline maps the shards that have no part yet over embedding actors
(one model per actor; ``num_gpus`` > 0 puts each actor on a GPU), so an interrupted run resumes
where it stopped: run the same command again. Each part records the model, dimensions and
quantizations in its schema metadata; ``pplx_embed.index.batch.read_parts`` loads them back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pplx_embed.atomic import atomic_path
from pplx_embed.errors import InputError
from pplx_embed.options import EmbedderOptions

COLUMNS = ("int8", "binary", "float")


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
    return files


def _read_table(path: Path, field: str):
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    table = pq.read_table(path) if path.suffix == ".parquet" else pj.read_json(path)
    if field not in table.column_names:
        raise InputError(f"{path}: no {field!r} column (columns: {', '.join(table.column_names)})")
    return table


def _shards(files: list[Path], field: str, rows_per_file: int) -> list[dict[str, Any]]:
    shards = []
    for number, path in enumerate(files):
        rows = _read_table(path, field).num_rows
        for start in range(0, rows, rows_per_file):
            shards.append({"file": str(path), "start": start, "stop": min(rows, start + rows_per_file),
                           "part": f"part-{number:05d}-{start:012d}.parquet"})
    return shards


class EmbedShards:
    """A Ray Data actor: loads the model once, embeds whole shards and writes their parts.

    Over-long texts are cut from the right unless the options ask for ``left``.
    """

    def __init__(self, options: EmbedderOptions, output: str, field: str, quantizations: tuple[str, ...],
                 dimensions: int | None):
        self.embedder = options.build()
        self.truncation = options.truncation or "right"
        self.output, self.field, self.quantizations, self.dimensions = Path(output), field, quantizations, dimensions

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from pplx_embed.model.quantization import quantize

        done = []
        for file, start, stop, part in zip(batch["file"], batch["start"], batch["stop"], batch["part"]):
            table = _read_table(Path(file), self.field).slice(int(start), int(stop) - int(start))
            texts = table.column(self.field).to_pylist()
            floats = self.embedder.encode(texts, dimensions=self.dimensions, truncation=self.truncation)
            columns = {name: table.column(name) for name in table.column_names}
            for q in self.quantizations:
                codes = quantize(floats, q)
                if q == "binary":
                    columns[q] = pa.array([row.tobytes() for row in codes], type=pa.binary(codes.shape[1]))
                else:
                    columns[q] = pa.FixedSizeListArray.from_arrays(pa.array(codes.ravel()), codes.shape[1])
            out = pa.table(columns).replace_schema_metadata({
                "model": self.embedder.name, "dimensions": str(floats.shape[1]),
                "quantizations": ",".join(self.quantizations), "source": str(file), "start": str(start)})
            with atomic_path(self.output / part) as tmp:  # a part exists only once it is complete
                pq.write_table(out, tmp)
            done.append(part)
        return {"part": done}


def embed_files(inputs: list[str], output: str, *, options: EmbedderOptions | None = None, field: str = "text",
                quantizations: tuple[str, ...] = ("int8", "binary"), dimensions: int | None = None,
                rows_per_file: int = 4096, num_cpus: int | None = None, num_gpus: float = 0,
                concurrency: int | None = None, show_progress_bar: bool = True) -> dict[str, Any]:
    """Embed every row's ``field`` into Parquet parts under ``output``; skips parts already written.

    Every actor loads the model of ``options`` (default: :meth:`EmbedderOptions.from_env`).
    """
    import ray

    options = options or EmbedderOptions.from_env()

    for q in quantizations:
        if q not in COLUMNS:
            raise InputError(f"unknown batch quantization {q!r}; choose from {', '.join(COLUMNS)}")
    if rows_per_file < 1:
        raise InputError("rows_per_file must be positive")
    files = _input_files(list(inputs))
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    shards = _shards(files, field, rows_per_file)
    todo = [s for s in shards if not (out / s["part"]).exists()]
    summary = {"output": str(out), "parts": len(shards), "skipped": len(shards) - len(todo), "written": 0}
    if not todo:
        return summary
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false",
                                           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}})
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = show_progress_bar
        if concurrency is None:  # one actor per GPU share, else one (torch uses every CPU thread)
            concurrency = max(1, int(ray.cluster_resources().get("GPU", 0) / num_gpus)) if num_gpus else 1
        written = ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
            EmbedShards, batch_size=1, concurrency=concurrency, num_gpus=num_gpus or None, num_cpus=1,
            fn_constructor_kwargs={"options": options, "output": str(out), "field": field,
                                   "quantizations": tuple(quantizations), "dimensions": dimensions},
        ).take_all()
    finally:
        if started:
            ray.shutdown()
    summary["written"] = len(written)
    return summary


def _parts(output: str) -> list[Path]:
    parts = sorted(Path(output).glob("part-*.parquet"))
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
        if getattr(store, "needs_compaction", False):
            store.compact()  # the first stage the index's new size calls for
        return {"index": str(location), "indexed_rows": rows, "items": len(store)}
    finally:
        store.close()


def _matrix(table, column: str, dtype) -> np.ndarray:
    """A fixed-size-list column as an [n, dim] array."""
    values = table.column(column).combine_chunks()
    return values.flatten().to_numpy(zero_copy_only=False).astype(dtype).reshape(len(values), -1)
