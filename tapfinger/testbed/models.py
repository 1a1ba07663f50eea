"""The models `tapfinger profile` trains: an image CNN, a Transformer language model, a speech model.

Their configurations are plain data (the parent process never imports torch for them); torch is
imported only inside the builders, so that a measurement worker imports it after pinning itself
to its CPUs (tapfinger/testbed/measurement.py) and `tapfinger --help` stays fast. Inputs are
synthetic: nothing is downloaded. docs/profiling.md describes the three families.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from tapfinger.testbed.errors import ProfilerError

FAMILIES = ("cnn", "lm", "audio")
SIZES = ("tiny", "small", "base")

# (module, make_batch(batch_size, generator) -> batch, loss(module, batch) -> scalar tensor)
Built = tuple[Any, Callable[[int, Any], Any], Callable[[Any, Any], Any]]


@dataclass(frozen=True)
class ModelConfig:
    """One trainable model: its family, size preset, default batch size and shape parameters."""

    name: str
    family: str
    size: str
    batch_size: int
    params: dict[str, int] = field(default_factory=dict)


# Shapes per family and size. `small` is the default (the bare family name); `tiny` exists
# for tests (a step takes milliseconds); `base` is for machines with more cores.
_PRESETS: dict[str, dict[str, tuple[int, dict[str, int]]]] = {
    "cnn": {  # ConvNet on 32x32 RGB images, 10 classes (CIFAR-like)
        "tiny": (8, {"width": 4, "image": 16, "classes": 10}),
        "small": (32, {"width": 16, "image": 32, "classes": 10}),
        "base": (64, {"width": 48, "image": 32, "classes": 10}),
    },
    "lm": {  # causal Transformer language model on token sequences
        "tiny": (4, {"vocab": 128, "d_model": 16, "layers": 1, "heads": 2, "seq": 16}),
        "small": (16, {"vocab": 4096, "d_model": 128, "layers": 2, "heads": 4, "seq": 64}),
        "base": (16, {"vocab": 16384, "d_model": 256, "layers": 6, "heads": 8, "seq": 128}),
    },
    "audio": {  # wav2vec2-like: strided conv feature encoder + Transformer + CTC over characters
        "tiny": (4, {"samples": 1600, "channels": 8, "d_model": 16, "layers": 1, "heads": 2,
                     "vocab": 30, "target": 4}),
        "small": (8, {"samples": 8000, "channels": 64, "d_model": 96, "layers": 2, "heads": 4,
                      "vocab": 30, "target": 12}),
        "base": (8, {"samples": 16000, "channels": 256, "d_model": 256, "layers": 4, "heads": 4,
                     "vocab": 30, "target": 24}),
    },
}


def model_names() -> list[str]:
    """Names `--models` accepts: `cnn`, `lm`, `audio` (size small) and `<family>-<size>`."""
    return list(FAMILIES) + [f"{f}-{s}" for f in FAMILIES for s in SIZES]


def model_config(name: str) -> ModelConfig:
    family, _, size = name.partition("-")
    size = size or "small"
    if family not in _PRESETS or size not in _PRESETS[family]:
        raise ProfilerError(f"unknown model {name!r}. Fix: use one of {', '.join(model_names())}")
    batch, params = _PRESETS[family][size]
    return ModelConfig(name=name, family=family, size=size, batch_size=batch, params=dict(params))


def build_model(cfg: ModelConfig) -> Built:
    """(module, make_batch(batch_size, generator) -> batch, loss(module, batch) -> scalar)."""
    builder = _BUILDERS.get(cfg.family)
    if builder is None:
        raise ProfilerError(f"unknown model family {cfg.family!r}; known: {', '.join(FAMILIES)}")
    return builder(cfg.params)


def _build_cnn(p: dict[str, int]) -> Built:
    """Three blocks of (conv-BN-ReLU x2, max-pool), global pooling, a linear classifier."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    w = p["width"]

    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2))

    model = nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 4 * w),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, p["classes"]))

    def make_batch(bs: int, gen: Any) -> Any:
        return (torch.randn(bs, 3, p["image"], p["image"], generator=gen),
                torch.randint(0, p["classes"], (bs,), generator=gen))

    def loss(m: Any, batch: Any) -> Any:
        x, y = batch
        return F.cross_entropy(m(x), y)

    return model, make_batch, loss


def _build_lm(p: dict[str, int]) -> Built:
    """A causal Transformer LM trained on next-token prediction over random tokens."""
    import torch
    import torch.nn.functional as F

    model = _TransformerLM(p["vocab"], p["d_model"], p["layers"], p["heads"], p["seq"])

    def make_batch(bs: int, gen: Any) -> Any:
        tokens = torch.randint(0, p["vocab"], (bs, p["seq"] + 1), generator=gen)
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def loss(m: Any, batch: Any) -> Any:
        x, y = batch
        logits = m(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    return model, make_batch, loss


def _build_audio(p: dict[str, int]) -> Built:
    """A wav2vec2-like speech model trained with CTC on random waveforms and "characters"."""
    import torch
    import torch.nn.functional as F

    model = _SpeechModel(p["channels"], p["d_model"], p["layers"], p["heads"], p["vocab"])

    def make_batch(bs: int, gen: Any) -> Any:
        wave = torch.randn(bs, p["samples"], generator=gen)
        # label 0 is the CTC blank; targets are random "characters" 1..vocab-1
        targets = torch.randint(1, p["vocab"], (bs, p["target"]), generator=gen)
        return wave, targets

    def loss(m: Any, batch: Any) -> Any:
        wave, targets = batch
        logp = m(wave).log_softmax(-1).transpose(0, 1)  # [frames, batch, vocab] for ctc_loss
        frames = torch.full((wave.shape[0],), logp.shape[0], dtype=torch.long)
        lengths = torch.full((wave.shape[0],), targets.shape[1], dtype=torch.long)
        return F.ctc_loss(logp, targets, frames, lengths, zero_infinity=True)

    return model, make_batch, loss


_BUILDERS: dict[str, Callable[[dict[str, int]], Built]] = {
    "cnn": _build_cnn, "lm": _build_lm, "audio": _build_audio}


def _TransformerLM(vocab: int, d_model: int, layers: int, heads: int, seq: int) -> Any:
    import torch
    from torch import nn

    class TransformerLM(nn.Module):
        """Token + position embeddings, a causal pre-norm Transformer encoder, a tied output layer."""

        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab, d_model)
            self.pos = nn.Parameter(torch.zeros(seq, d_model))
            layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.1,
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d_model)
            self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

        def forward(self, x: Any) -> Any:
            h = self.tok(x) + self.pos[: x.shape[1]]
            h = self.encoder(h, mask=self.mask[: x.shape[1], : x.shape[1]], is_causal=True)
            return self.norm(h) @ self.tok.weight.t()  # weight tying, as GPT-2 does

    return TransformerLM()


def _SpeechModel(channels: int, d_model: int, layers: int, heads: int, vocab: int) -> Any:
    from torch import nn

    class SpeechModel(nn.Module):
        """Raw waveform -> strided 1-D convolutions (total stride 320, ~20 ms frames at 16 kHz,
        as in wav2vec2's feature encoder) -> Transformer encoder -> per-frame character logits."""

        def __init__(self) -> None:
            super().__init__()
            convs: list[nn.Module] = []
            cin = 1
            for k, s in [(10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2)]:
                convs += [nn.Conv1d(cin, channels, k, stride=s, bias=False), nn.GroupNorm(1, channels), nn.GELU()]
                cin = channels
            self.features = nn.Sequential(*convs)
            self.project = nn.Linear(channels, d_model)
            layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.1,
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.head = nn.Linear(d_model, vocab)

        def forward(self, wave: Any) -> Any:
            h = self.features(wave.unsqueeze(1)).transpose(1, 2)  # [batch, frames, channels]
            return self.head(self.encoder(self.project(h)))

    return SpeechModel()
