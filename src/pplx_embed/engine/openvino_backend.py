"""OpenVINO (CPU) backend: our torch encoder converted once to OpenVINO IR, run in fp32 or bf16, or int8.

Conversion is direct, ``openvino.convert_model`` on the loaded transformers module (PyTorch
frontend), not through optimum-intel: optimum-intel pins older ``transformers`` than ours, and the
direct path converts exactly the module the torch backend runs (the bidirectional Qwen3 included),
with attention fused into OpenVINO's ``ScaledDotProductAttention``. The IR returns
``last_hidden_state``; the engine pools spans itself, so late chunking and every output precision
work as on torch.

Variants: ``openvino`` (fp32 weights; ``INFERENCE_PRECISION_HINT`` f32 or bf16 at compile time)
and ``openvino-int8`` (NNCF post-training quantization of the fp32 IR, calibrated on the texts
shipped with the package: int8 weights and activations in the matrix multiplications). IRs are
cached under ``$PPLX_EMBED_CACHE/openvino`` keyed by checkpoint files, variant and versions.
"""

from __future__ import annotations

import inspect
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from pplx_embed.engine.export import ExportKind, prepare_export
from pplx_embed.engine.threads import physical_cores
from pplx_embed.model.pooling import Span, pool_spans

KIND = ExportKind("openvino", "model.xml", format=2, libraries=("torch", "transformers", "openvino"))
PRECISIONS = {torch.float32: "f32", torch.bfloat16: "bf16"}


class HiddenStates(torch.nn.Module):
    """The encoder as a function of named int64 inputs returning ``last_hidden_state``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        # decoder-style encoders (Qwen3) would trace an empty key/value cache and concatenate onto it
        self.extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None):
        extra = dict(self.extra) if token_type_ids is None else {**self.extra, "token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state


def input_names(model: torch.nn.Module) -> list[str]:
    """``input_ids``, ``attention_mask`` and, for BERT-style encoders, ``token_type_ids``."""
    names = ["input_ids", "attention_mask"]
    return names + ["token_type_ids"] if "token_type_ids" in inspect.signature(model.forward).parameters else names


def feeds(names: list[str] | set[str], input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
    """The inputs of one right-padded batch (zero token types where the model takes them)."""
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "token_type_ids" in names:
        out["token_type_ids"] = np.zeros_like(input_ids)
    return out


def convert(model: torch.nn.Module, target: Path) -> Path:
    """Convert a float32 transformers encoder to IR (``target`` = ``model.xml``) with dynamic batch and length."""
    import openvino as ov

    if next(model.parameters()).dtype != torch.float32:
        raise ValueError("OpenVINO conversion needs the float32 model; load it with dtype='float32'")
    names = input_names(model)
    ids = torch.full((2, 8), 100, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # trace the padded path: the mask stays an input
    example = feeds(names, ids.numpy(), mask.numpy())
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # transformers' mask code branches on shapes (cache offset, one-token query); without a KV cache and with
        # an explicit mask those branches are constant for an encoder, which the tests check against torch
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        converted = ov.convert_model(
            HiddenStates(model).eval(), example_input={k: torch.from_numpy(v) for k, v in example.items()},
            input=[(name, ov.PartialShape([-1, -1]), ov.Type.i64) for name in names])
    converted.outputs[0].get_tensor().set_names({"last_hidden_state"})
    ov.save_model(converted, target, compress_to_fp16=False)
    return target


# The FFN output projections (BERT ``layer.N.output.dense``, Qwen3 ``mlp.down_proj``) read GELU/SiLU outputs
# with large outliers: they stay in float (docs/engine.md, "Measurements behind the code").
FLOAT_MATMULS = (r".*layer\.\d+\.output\.dense/.*", r".*mlp\.down_proj/.*")


def quantize_int8(source: Path, target: Path, calibration: list[dict[str, np.ndarray]]) -> Path:
    """NNCF post-training int8 quantization of an IR, calibrated on ``calibration`` inputs.

    Every matrix multiplication but the FFN output projections gets int8 weights and activations.
    """
    import nncf
    import openvino as ov

    model = ov.Core().read_model(source)
    quantized = nncf.quantize(model, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(calibration),
                              ignored_scope=nncf.IgnoredScope(patterns=list(FLOAT_MATMULS), validate=False))
    ov.save_model(quantized, target, compress_to_fp16=False)
    return target


def prepare_openvino(model: torch.nn.Module, checkpoint_path: Path, variant: str = "openvino",
                     name: str | None = None, calibration: list[list[int]] | None = None) -> Path:
    """The cached IR (``model.xml``) of this checkpoint and variant, converting (and quantizing) it first if needed.

    ``openvino-int8`` quantizes the cached fp32 IR with ``calibration`` token ids (one text each).
    """
    names = input_names(model)

    def quantize(source: Path, target: Path) -> None:
        if not calibration:
            raise ValueError("openvino-int8 needs calibration texts")
        quantize_int8(source, target, [feeds(names, np.array([ids], np.int64), np.ones((1, len(ids)), np.int64))
                                       for ids in calibration])

    return prepare_export(KIND, checkpoint_path, variant, name, export=lambda target: convert(model, target),
                          quantize=quantize, facts={"inputs": names},
                          libraries=("nncf",) if variant == "openvino-int8" else ())


#: In throughput streams, a batch is split only when every stream gets at least this many rows: a slice of one or
#: two rows on one thread is slower than the whole batch on every thread.
SPLIT_ROWS = 4


def gated_mlp(model) -> bool:
    """True when the IR has a gated MLP (``act(x W_gate) * (x W_up)``: SwiGLU, GeGLU), as Qwen3 does."""
    for op in model.get_ops():
        if op.get_type_name() not in ("Swish", "Gelu"):
            continue
        for target in op.output(0).get_target_inputs():
            product = target.get_node()
            if product.get_type_name() == "Multiply" and any(
                    x.get_source_output().get_node().get_type_name() == "MatMul" for x in product.inputs()):
                return True
    return False


class OpenVinoBackend:
    """Runs an IR on the CPU plugin in fp32 or bf16 (or int8), with physical-core threads.

    ``throughput=False``: one stream using every thread (the latency hint). ``throughput=True``:
    OpenVINO's throughput hint chooses the streams (2 on a 2-core CPU, one thread each) and a batch
    of at least ``SPLIT_ROWS`` rows per stream is split into row slices run at once, each cut to its
    own longest row; smaller batches run on a second, one-stream compilation (a second copy of the weights:
    ``auto`` offers this layout to small models only). On small models the streams avoid threads
    synchronising inside every small matrix multiplication (docs/engine.md, "OpenVINO conversion").
    OpenVINO 2026.4 dies (SIGFPE) compiling a gated MLP in bf16
    for several streams (it fuses the MLP into an AMX kernel), so that combination is refused
    (``throughput=True``) or falls back to one stream (``None``: streams where the runtime can and
    the CPU has several cores).
    """

    def __init__(self, model_xml: Path, variant: str = "openvino", dtype: torch.dtype = torch.float32,
                 threads: int | None = None, throughput: bool | None = False):
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        if dtype not in PRECISIONS:
            raise ValueError(f"backend {variant!r} computes in float32 or bfloat16, not {dtype}")
        core = ov.Core()
        model = core.read_model(model_xml)
        broken = dtype == torch.bfloat16 and gated_mlp(model)
        if throughput and broken:
            raise ValueError("OpenVINO cannot compile this model's gated MLP in bfloat16 for several streams; "
                             "use the latency layout (throughput=False) or float32")
        if throughput is None:
            throughput = not broken and (threads or physical_cores()) > 1
        config = {hints.inference_precision: PRECISIONS[dtype], hints.performance_mode: hints.PerformanceMode.LATENCY,
                  props.inference_num_threads: threads or physical_cores()}
        self.single = core.compile_model(model, "CPU", config).create_infer_request()
        self.streams, self.requests = 1, [self.single]
        if throughput:
            compiled = core.compile_model(model, "CPU", {**config,
                                                         hints.performance_mode: hints.PerformanceMode.THROUGHPUT})
            streams = int(compiled.get_property(props.num_streams))
            if streams > 1:  # the hint may settle on one stream
                self.streams, self.requests = streams, [compiled.create_infer_request() for _ in range(streams)]
        self.lock = threading.Lock()  # one batch at a time: the requests' output buffers are reused
        self.input_names = {i.get_any_name() for i in model.inputs}
        self.name = variant
        self.throughput = self.streams > 1
        self.model_file = Path(model_xml)

    def pool(self, input_ids: np.ndarray, attention_mask: np.ndarray, spans: list[list[Span]], mode: str) -> np.ndarray:
        """Pooled float32 vectors ``[total spans, dim]`` for one right-padded batch."""
        split = self.streams > 1 and len(input_ids) >= SPLIT_ROWS * self.streams
        requests = self.requests if split else [self.single]
        edges = [len(input_ids) * k // len(requests) for k in range(len(requests) + 1)]  # contiguous row slices
        with self.lock:  # pool before the next batch overwrites the output buffers
            for request, start, end in zip(requests, edges, edges[1:]):
                width = int(attention_mask[start:end].sum(1).max())  # each slice cut to its own longest row
                request.start_async(feeds(self.input_names, np.ascontiguousarray(input_ids[start:end, :width]),
                                          np.ascontiguousarray(attention_mask[start:end, :width])))
            pooled = []
            for request, start, end in zip(requests, edges, edges[1:]):
                request.wait()
                hidden = torch.from_numpy(np.asarray(request.get_output_tensor(0).data))
                pooled.append(pool_spans(hidden, spans[start:end], mode))
            return torch.cat(pooled).numpy()
