"""VDCNN and the text targets on tiny made-up character tasks (no ../shared needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from svp import Strategy, evaluate, predict, select
from svp.vdcnn import (
    ALPHABET,
    PAD,
    SPACE,
    UNKNOWN,
    VDCNN,
    VOCAB,
    create_text_target,
    encode_texts,
    fit_text_target,
    kmax_pool,
    text_target_names,
    train_vdcnn,
    vdcnn_config,
)


def test_alphabet_is_the_papers_69_tokens_and_encoding() -> None:
    assert VOCAB == 69
    codes = encode_texts(["Ab c\n€", "x" * 10], max_length=8)
    assert codes.dtype == torch.uint8
    assert codes.shape == (2, 8)
    a, b = ALPHABET.index("a") + 3, ALPHABET.index("b") + 3
    c = ALPHABET.index("c") + 3
    assert codes[0].tolist() == [a, b, SPACE, c, SPACE, UNKNOWN, PAD, PAD]
    assert codes[1].tolist() == [ALPHABET.index("x") + 3] * 8


@pytest.mark.parametrize(("name", "convs"), [("vdcnn", 9), ("vdcnn17", 17), ("vdcnn29", 29)])
def test_depths_are_the_papers_and_shapes_hold(name: str, convs: int) -> None:
    net = create_text_target(name, num_classes=5).eval()
    assert sum(isinstance(m, nn.Conv1d) for m in net.modules()) == convs
    with torch.no_grad():
        # Shorter than the k-max pooling needs (64): padded, not an error.
        for length in (20, 64, 300):
            logits, feats = net(encode_texts(["hello world"] * 3, max_length=length))
            assert logits.shape == (3, 5)
            assert feats.shape == (3, 2048)


def test_kmax_keeps_the_largest_in_order() -> None:
    x = torch.tensor([[[5.0, 1.0, 7.0, 3.0, 6.0]]])
    assert kmax_pool(x, 3).tolist() == [[[5.0, 7.0, 6.0]]]


def test_unknown_depth_and_target_are_refused() -> None:
    with pytest.raises(ValueError, match="depth"):
        VDCNN(3, depth=11)
    with pytest.raises(KeyError, match="unknown text target"):
        create_text_target("vdcnn49", 3)
    assert text_target_names() == ["linear", "vdcnn", "vdcnn17", "vdcnn29", "vdcnn9"]


def char_task(n: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """Random letters; the class is which marker word the text carries."""
    rng = np.random.default_rng(seed)
    markers = ["qqqq", "zzzz", "xxxx"]
    y = rng.integers(0, len(markers), n)
    texts = []
    for c in y:
        noise = "".join(rng.choice(list("abcdefghijklmnop "), 50))
        cut = int(rng.integers(0, 50))
        texts.append(noise[:cut] + " " + markers[c] + " " + noise[cut:])
    return texts, torch.from_numpy(y)


def test_learns_a_tiny_char_task_and_scores_through_the_engine() -> None:
    texts, y = char_task(240, 0)
    test_texts, test_y = char_task(150, 1)
    codes, test_codes = encode_texts(texts, 64), encode_texts(test_texts, 64)
    config = vdcnn_config(6, batch_size=32, lr=0.05, num_threads=1)
    # A narrow depth-9 network: the paper's widths took minutes on two busy cores.
    net = create_text_target("vdcnn", 3, width=16, hidden=128)
    fit = train_vdcnn(net, codes, y, config)
    assert fit.stats.epochs == 6
    # Chance is a third; the engine's evaluate/predict/select take the code pool as they take
    # pixels (uint8 in, scaled to [0, 1] on the way, turned back into codes by the model).
    acc = evaluate(fit.model, test_codes, test_y)
    assert acc > 0.6, acc
    probs = predict(fit.model, test_codes).probs
    np.testing.assert_allclose(probs.sum(1).numpy(), 1.0, rtol=1e-5)
    res = select(fit.model, test_codes, [0, 1], 10, Strategy.LEAST_CONFIDENCE)
    assert len(set(res.indices)) == 10
    assert not {0, 1} & set(res.indices)


def test_same_seed_same_model() -> None:
    texts, y = char_task(40, 2)
    codes = encode_texts(texts, 64)
    config = vdcnn_config(1, batch_size=16, num_threads=1)
    a = train_vdcnn(create_text_target("vdcnn", 3, width=8, hidden=32), codes, y, config).model
    b = train_vdcnn(create_text_target("vdcnn", 3, width=8, hidden=32), codes, y, config).model
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)


def test_linear_target_on_embeddings() -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (120,), generator=gen)
    centres = torch.randn(3, 16, generator=gen) * 3
    feats = centres[y] + torch.randn(120, 16, generator=gen)
    fit = fit_text_target("linear", y[:80], 3, vdcnn_config(1), features=feats[:80])
    assert evaluate(fit.model, feats[80:], y[80:]) > 0.9
    with pytest.raises(ValueError, match="features"):
        fit_text_target("linear", y, 3, vdcnn_config(1))
    with pytest.raises(ValueError, match="codes"):
        fit_text_target("vdcnn", y, 3, vdcnn_config(1), features=feats)
