"""Record upstream GPT-SoVITS outputs on the project's tiny random checkpoints.

Run in a Python that can import upstream's model code (torch, and the packages upstream's
``GPT_SoVITS`` imports) and this project:

    GSV_UPSTREAM_DIR=/path/to/GPT-SoVITS python tests/data/upstream/record.py [--commit SHA]

It rebuilds the checkpoints exactly as the test fixtures do (``tests/conftest.py``:
``make_voice_checkpoints(version, ..., size="tiny", seed=0)`` per version and the support
bundle's ``make_checkpoint("v2Pro", "sv", ..., size="tiny")``), loads them into upstream's own
classes (``Text2SemanticLightningModule``, ``SynthesizerTrn`` via ``process_ckpt``, ``ERes2NetV2``;
the modules whose widths upstream hard-codes are rebuilt as the upstream-marked tests do) and
writes, next to this script:

- ``gpt.npz``: per distinct GPT checkpoint (``meta.same_as`` names the versions sharing one),
  the prompted, ref-free and batch greedy tokens of ``infer_panel_naive`` and
  ``infer_panel_batch_infer``, the logits of the first and last steps, EOS-masked fixed-length
  greedy tokens, and tokens sampled with injected Exp(1) noise (numpy ``default_rng(seed)``, as
  the runtime draws it);
- ``sampler.npz``: ``AR.models.utils.sample`` on fixed logits, with the noise it drew;
- ``sovits.npz``: per version, ``extract_latent`` codes, ``ge`` and ``decode`` audio
  (noise_scale 0, speeds 1 and 1.25);
- ``sv.npz``: ``kaldi.fbank`` features and ``ERes2NetV2.forward3`` embeddings;
- ``features.npz``: ``spectrogram_torch`` of 32 kHz clips.

Every file also carries the inputs (audio as float16 values, stored exactly) and, under
``meta`` (a JSON string), the upstream commit, the torch version and the SHA-256 of each
checkpoint file the outputs were made from. ``tests/test_upstream_recorded.py`` checks the
project's onnxruntime path against these files in CI, without upstream.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from gsv_models.checkpoint import load_checkpoint  # noqa: E402
from gsv_models.sovits import UPSTREAM_ONLY_PREFIXES  # noqa: E402
from gsv_models.testing import make_checkpoint, make_voice_checkpoints  # noqa: E402
from gsv_models.testing.sv_init import tiny_sv_kwargs  # noqa: E402
from gsv_models.version import ModelVersion  # noqa: E402
from tests.test_upstream_sovits import _upstream_ge, _upstream_net  # noqa: E402
from tests.test_upstream_sv import _upstream_kwargs  # noqa: E402
from tests.test_upstream_t2s import _logits_of  # noqa: E402
from tests.upstream_oracle import import_upstream  # noqa: E402

VERSIONS = ("v1", "v2", "v2Pro", "v2ProPlus")
REPETITION_PENALTY = 1.35
"""The sampler default (upstream api_v2 and the runtime's SamplingParams)."""
LOGIT_HEAD, LOGIT_TAIL = 6, 4
"""Steps whose full logits are kept: the first ones and the last ones (around EOS)."""
FIXED_LENGTH = 160
SAMPLE_SEEDS = (0, 1)
SAMPLER_PARAMS = (
    {"top_k": 15, "top_p": 1.0, "temperature": 1.0, "repetition_penalty": 1.35},
    {"top_k": 5, "top_p": 0.8, "temperature": 0.7, "repetition_penalty": 1.2},
    {"top_k": 1, "top_p": 1.0, "temperature": 1.0, "repetition_penalty": 1.0},
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def clip(seed: int, n: int, scale: float = 0.2) -> torch.Tensor:
    """Noise audio whose values are exact float16 numbers (stored losslessly at half size)."""
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, generator=g)).clamp(-1, 1).half().float()


def save(name: str, meta: dict[str, Any], arrays: dict[str, Any]) -> None:
    out = {
        k: np.asarray(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in arrays.items()
    }
    for k, v in out.items():
        if v.dtype == np.float64:
            raise TypeError(f"{k}: store float32")
    out["meta"] = np.array(json.dumps(meta, sort_keys=True))
    np.savez_compressed(HERE / name, **out)
    size = (HERE / name).stat().st_size
    print(f"wrote {name}: {len(out) - 1} arrays, {size / 1024:.0f} KiB")


# --- GPT --------------------------------------------------------------------------------------


def upstream_gpt(path: Path) -> nn.Module:
    """Upstream's loader (TTS.init_t2s_weights), with bert_proj sized to the tiny BERT width."""
    lightning = import_upstream("AR.models.t2s_lightning_module")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    module = lightning.Text2SemanticLightningModule(ckpt["config"], "****", is_train=False)
    emb, bert_dim = ckpt["weight"]["model.bert_proj.weight"].shape
    if bert_dim != module.model.bert_proj.in_features:  # upstream hard-codes 1024
        module.model.bert_proj = nn.Linear(bert_dim, emb)
    module.load_state_dict(ckpt["weight"], strict=True)
    return module.model.eval()


def gpt_inputs(model: nn.Module, bert_dim: int, lx: int, p: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    rows = model.ar_text_embedding.word_embeddings.num_embeddings
    return {
        "phones": torch.randint(0, rows, (lx,), generator=g),
        "bert": torch.randn(lx, bert_dim, generator=g),  # runtime layout [N, bert_dim]
        "prompt": torch.randint(0, model.EOS, (p,), generator=g),
    }


def naive(
    model: nn.Module, x: dict[str, Any], prompt: bool = True, **kw: Any
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """infer_panel_naive's generated tokens (prompt removed) and the logits of every step."""
    kw = {"top_k": 1, "top_p": 1.0, "temperature": 1.0, "repetition_penalty": 1.35, **kw}
    phones, bert = x["phones"][None], x["bert"].T[None]
    y0 = x["prompt"][None] if prompt else None
    with _logits_of(model) as (logits,), torch.no_grad():
        y, _ = next(
            model.infer_panel_naive(phones, torch.tensor([phones.shape[1]]), y0, bert, **kw)
        )
    return y[0, 0 if y0 is None else y0.shape[1] :].long(), [t[0] for t in logits]


def masked_eos(model: nn.Module) -> Callable[[], None]:
    """Make EOS impossible (logit −inf) from the predict layer on; returns the remover."""
    eos = model.EOS

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[..., eos] = -torch.inf
        return out

    return model.ar_predict_layer.register_forward_hook(hook).remove


def numpy_noise(utils: Any, seed: int) -> Callable[[], None]:
    """Replace upstream's Exp(1) draw by numpy's default_rng(seed), one draw per step."""
    rng = np.random.default_rng(seed)
    original = utils.multinomial_sample_one_no_sync

    def draw(probs_sort: torch.Tensor) -> torch.Tensor:
        assert probs_sort.shape[0] == 1
        q = torch.from_numpy(rng.standard_exponential(probs_sort.shape[-1], dtype=np.float32))
        return torch.argmax(probs_sort / q[None], dim=-1, keepdim=True).to(dtype=torch.int)

    utils.multinomial_sample_one_no_sync = draw

    def restore() -> None:
        utils.multinomial_sample_one_no_sync = original

    return restore


def record_gpt(version: str, path: Path) -> dict[str, Any]:
    model = upstream_gpt(path)
    bert_dim = model.bert_proj.in_features
    utils = import_upstream("AR.models.utils")
    out: dict[str, Any] = {}
    x = gpt_inputs(model, bert_dim, 37, 45, seed=5)
    out.update({f"{version}/prompted/{k}": v for k, v in x.items()})
    tokens, logits = naive(model, x)
    assert len(tokens) >= 20, f"{version}: EOS after {len(tokens)} tokens"
    head = list(range(LOGIT_HEAD))
    tail = list(range(len(logits) - LOGIT_TAIL, len(logits)))
    out[f"{version}/prompted/tokens"] = tokens
    out[f"{version}/prompted/logit_steps"] = np.array(head + tail)
    out[f"{version}/prompted/logits"] = torch.stack([logits[i] for i in head + tail])
    out[f"{version}/prompted/logit_scale"] = np.float32(max(float(t.abs().max()) for t in logits))

    free = gpt_inputs(model, bert_dim, 29, 0, seed=6)
    del free["prompt"]
    out.update({f"{version}/ref_free/{k}": v for k, v in free.items()})
    out[f"{version}/ref_free/tokens"], _ = naive(model, {**free, "prompt": None}, prompt=False)

    remove = masked_eos(model)
    try:
        fixed, _ = naive(model, x, early_stop_num=FIXED_LENGTH - 1)
    finally:
        remove()
    assert len(fixed) == FIXED_LENGTH
    out[f"{version}/prompted/fixed_tokens"] = fixed

    for seed in SAMPLE_SEEDS:
        restore = numpy_noise(utils, seed)
        try:
            sampled, _ = naive(model, x, top_k=15)
        finally:
            restore()
        out[f"{version}/prompted/sampled_tokens_{seed}"] = sampled

    lens, p = [23, 41, 9], 30
    g = torch.Generator().manual_seed(7)
    rows = model.ar_text_embedding.word_embeddings.num_embeddings
    xs = [torch.randint(0, rows, (n,), generator=g) for n in lens]
    berts = [torch.randn(n, bert_dim, generator=g) for n in lens]
    prompt = torch.randint(0, model.EOS, (len(lens), p), generator=g)
    with torch.no_grad():
        y_list, _ = model.infer_panel_batch_infer(
            xs,
            torch.tensor(lens),
            prompt,
            [b.T for b in berts],
            top_k=1,
            top_p=1.0,
            temperature=1.0,
            repetition_penalty=REPETITION_PENALTY,
        )
    for i, (xi, bi, yi) in enumerate(zip(xs, berts, y_list, strict=True)):
        out[f"{version}/batch/{i}/phones"] = xi
        out[f"{version}/batch/{i}/bert"] = bi
        out[f"{version}/batch/{i}/prompt"] = prompt[i]
        out[f"{version}/batch/{i}/tokens"] = yi[p:].long()
    lengths = [
        len(t) for t in [tokens, out[f"{version}/ref_free/tokens"], *[y[p:] for y in y_list]]
    ]
    print(f"  gpt {version}: greedy lengths {lengths}")
    return out


def record_sampler() -> dict[str, Any]:
    """upstream sample() on fixed logits; the Exp(1) noise is the one it draws after the seed."""
    utils = import_upstream("AR.models.utils")
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1025, generator=g) * 3
    prev = torch.randint(0, 1024, (3, 40), generator=g)
    out: dict[str, Any] = {"logits": logits, "previous": prev}
    for i, kw in enumerate(SAMPLER_PARAMS):
        torch.manual_seed(7 + i)
        tokens, probs = utils.sample(logits.clone(), prev, **kw)
        torch.manual_seed(7 + i)
        noise = torch.empty_like(probs).exponential_(1)  # multinomial_sample_one_no_sync's draw
        assert torch.equal(torch.argmax(probs / noise, dim=-1, keepdim=True), tokens)
        out[f"{i}/params"] = np.array(json.dumps(kw))
        out[f"{i}/noise"] = noise
        out[f"{i}/probs"] = probs
        out[f"{i}/tokens"] = tokens[:, 0].long()
    return out


# --- SoVITS -----------------------------------------------------------------------------------


def upstream_sovits(path: Path) -> tuple[Any, nn.Module]:
    """Upstream's file reader (process_ckpt.load_sovits_new) into upstream's SynthesizerTrn."""
    cfg = load_checkpoint(path).config
    payload = import_upstream("process_ckpt").load_sovits_new(str(path))
    net = _upstream_net(cfg)
    result = net.load_state_dict(payload["weight"], strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    assert all(k.startswith(UPSTREAM_ONLY_PREFIXES) for k in result.missing_keys)
    return cfg, net


def record_sovits(version: str, path: Path, ref32k: torch.Tensor) -> dict[str, Any]:
    cfg, net = upstream_sovits(path)
    spectrogram = import_upstream("module.mel_processing").spectrogram_torch
    g = torch.Generator().manual_seed(11)
    n_codes, n_phones = 10, 14
    ssl = torch.randn(1, cfg.ssl_dim, 2 * n_codes + 1, generator=g)
    codes = torch.randint(0, cfg.codebook_size, (n_codes,), generator=g)
    phones = torch.randint(0, cfg.n_symbols, (n_phones,), generator=g)
    sv = torch.randn(1, cfg.sv_dim, generator=g).abs() if cfg.version.is_pro else None
    spec = spectrogram(
        ref32k[None], cfg.filter_length, cfg.sampling_rate, cfg.hop_length, cfg.win_length, False
    )
    out: dict[str, Any] = {f"{version}/ssl": ssl[0], f"{version}/codes": codes}
    out[f"{version}/phones"] = phones
    with torch.no_grad():
        out[f"{version}/prompt_codes"] = net.extract_latent(ssl)[0, 0]
        if sv is not None:
            out[f"{version}/sv"] = sv[0]
        out[f"{version}/ge"] = _upstream_ge(net, cfg, spec, sv)[0]
        for speed in (1.0, 1.25):
            wav = net.decode(codes[None, None], phones[None], spec, 0.0, speed, sv_emb=sv)
            out[f"{version}/wav_speed{speed}"] = wav[0, 0]
    print(f"  sovits {version}: {out[f'{version}/wav_speed1.0'].shape[0]} samples")
    return out


# --- SV and features ----------------------------------------------------------------------------


def record_sv(path: Path) -> dict[str, Any]:
    kaldi = import_upstream("kaldi")
    model = import_upstream("ERes2NetV2").ERes2NetV2(**_upstream_kwargs(tiny_sv_kwargs()))
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state, strict=True)  # as GPT_SoVITS/sv.py, fp16 values into fp32
    model.eval()

    def fbank(wav: torch.Tensor) -> torch.Tensor:
        return kaldi.fbank(wav[None], num_mel_bins=80, sample_frequency=16000, dither=0)

    wavs = torch.stack([clip(20 + i, 16000) for i in range(2)])
    out: dict[str, Any] = {"wav16k": wavs.half()}
    with torch.no_grad():
        feats = torch.stack([fbank(w) for w in wavs])
        out["fbank"] = feats
        out["embedding"] = model.forward3(feats.clone())
        for n in (400, 1234):
            out[f"fbank_{n}"] = fbank(wavs[0, :n])
    return out


def record_features(ref32k: torch.Tensor) -> dict[str, Any]:
    spectrogram = import_upstream("module.mel_processing").spectrogram_torch
    out: dict[str, Any] = {"wav32k": ref32k.half()}
    for n in (5000, 12899):
        out[f"spec_{n}"] = spectrogram(ref32k[None, :n], 2048, 32000, 640, 2048, center=False)[0]
    return out


def upstream_commit(root: Path, given: str | None) -> str:
    if given:
        return given
    try:
        return subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sys.exit("cannot read the upstream commit with git; pass --commit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commit", help="upstream commit of GSV_UPSTREAM_DIR (else git HEAD)")
    args = parser.parse_args()
    root = Path(os.environ["GSV_UPSTREAM_DIR"])
    commit = upstream_commit(root, args.commit)
    torch.set_num_threads(2)
    base = {
        "upstream": {"repo": "RVC-Boss/GPT-SoVITS", "commit": commit},
        "torch": torch.__version__,
    }
    ref32k = clip(10, 32000)
    gpt: dict[str, Any] = {}
    sovits: dict[str, Any] = {}
    hashes: dict[str, dict[str, str]] = {"gpt": {}, "sovits": {}, "sv": {}}
    gpt_done: dict[str, str] = {}
    same_as: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for version in VERSIONS:
            folder = Path(tmp) / f"tiny-{version}"
            paths = make_voice_checkpoints(ModelVersion.parse(version), folder, "tiny", seed=0)
            files = {p.stem: p for p in paths}
            for kind, p in files.items():
                hashes[kind][f"{version}/{p.name}"] = sha256(p)
            digest = hashes["gpt"][f"{version}/gpt.ckpt"]
            if digest in gpt_done:  # v2, v2Pro and v2ProPlus share one GPT: recorded once
                same_as[version] = gpt_done[digest]
            else:
                gpt_done[digest] = version
                gpt.update(record_gpt(version, files["gpt"]))
            sovits.update(record_sovits(version, files["sovits"], ref32k))
        sv_path = make_checkpoint("v2Pro", "sv", Path(tmp) / "support" / "sv.ckpt", size="tiny")
        sv_hash = {"support/sv.ckpt": sha256(sv_path)}
        sv = record_sv(sv_path)
    sovits["ref32k"] = ref32k.half()
    save("gpt.npz", {**base, "checkpoints": hashes["gpt"], "same_as": same_as}, gpt)
    save("sampler.npz", {**base, "checkpoints": {}}, record_sampler())
    save("sovits.npz", {**base, "checkpoints": hashes["sovits"]}, sovits)
    # the voices' own sv.ckpt (v2Pro/v2ProPlus) is unused at inference (the support bundle's
    # is); its hash is kept so that a change of the fixtures shows up
    save("sv.npz", {**base, "checkpoints": sv_hash, "voice_checkpoints": hashes["sv"]}, sv)
    save("features.npz", {**base, "checkpoints": {}}, record_features(ref32k))


if __name__ == "__main__":
    main()
