"""End to end on tiny random bundles: the torch-free runtime against the PyTorch reference."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import requires
from pathlib import Path

import numpy as np
import pytest
import torch

from gsv_export.parity import snr_db
from gsv_models.load import load_model
from gsv_runtime.config import SynthesisConfig
from gsv_runtime.errors import InputError
from gsv_runtime.gpt.sampling import SamplingParams
from gsv_runtime.synthesizer import Synthesizer
from gsv_runtime.voice import Voice
from tests.conftest import VERSIONS

TEXT = "今天天气很好，我们去公园散步吧。"
PROMPT = "这是一段参考音频。"


def _torch_tokens(gpt: torch.nn.Module, voice: Voice, phones: np.ndarray, bert: np.ndarray):
    x = torch.from_numpy(np.concatenate([voice.prompt_phones, phones]))[None]
    b = torch.from_numpy(np.concatenate([voice.prompt_bert, bert], axis=0))[None]
    prompt = torch.from_numpy(voice.prompt_tokens)[None]
    params = SamplingParams(top_k=1)
    out = gpt.generate(x, torch.tensor([x.shape[1]]), b, prompt, params=params)
    return out[0].numpy()


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("version", VERSIONS)
def test_greedy_tokens_and_audio_match_torch(
    tiny_bundle, tiny_voice, ref_wav: Path, version: str, backend: str
) -> None:
    synth = Synthesizer.load(tiny_bundle(version), backend=backend)
    voice = synth.voice(ref_wav, PROMPT, "zh")
    config = SynthesisConfig.from_options(top_k=1, noise_scale=0.0, text_split_method="cut5")
    segments = synth.frontend(TEXT, "zh", config)
    assert len(segments) == 2
    rngs = [np.random.default_rng(i) for i in range(len(segments))]
    tokens = synth.semantic_tokens(segments, voice, config, rngs)
    _, gpt = load_model(tiny_voice(version)["gpt"])
    _, sovits = load_model(tiny_voice(version)["sovits"])
    for seg, tok in zip(segments, tokens, strict=True):
        assert len(tok) > 11
        np.testing.assert_array_equal(tok, _torch_tokens(gpt, voice, seg.phones, seg.bert))
    wavs = synth.vocode(tokens, segments, voice, config, seed=0)
    for seg, tok, wav in zip(segments, tokens, wavs, strict=True):
        codes, phones = torch.from_numpy(tok)[None], torch.from_numpy(seg.phones)[None]
        ref, _ = sovits.decode(
            codes,
            torch.tensor([codes.shape[1]]),
            phones,
            torch.tensor([phones.shape[1]]),
            torch.from_numpy(voice.mean_ge),
            noise_scale=0.0,
        )
        assert snr_db(ref[0, 0].numpy(), wav) >= 50.0


def test_seeded_runs_repeat_and_saved_voice_equals_file(tiny_bundle, ref_wav: Path) -> None:
    root = tiny_bundle("v2ProPlus")
    synth = Synthesizer.load(root, backend="onnxruntime")
    kwargs = {"ref_audio": ref_wav, "prompt_text": PROMPT, "prompt_lang": "zh", "seed": 7}
    first = synth.synthesize(TEXT, "zh", **kwargs)
    second = synth.synthesize(TEXT, "zh", **kwargs)
    np.testing.assert_array_equal(first.samples, second.samples)
    assert first.metadata["seed"] == 7 and first.samples.dtype == np.int16
    other = synth.synthesize(TEXT, "zh", **{**kwargs, "seed": 8})
    assert not np.array_equal(first.samples, other.samples)
    synth.voice(ref_wav, PROMPT, "zh").save(root, "alice")
    saved = synth.synthesize(TEXT, "zh", synth.saved_voice("alice"), seed=7)
    np.testing.assert_array_equal(saved.samples, first.samples)


def test_seeded_audio_is_the_same_on_both_backends(tiny_bundle, ref_wav: Path) -> None:
    results = []
    for backend in ("onnxruntime", "openvino"):
        synth = Synthesizer.load(tiny_bundle("v2"), backend=backend)
        results.append(
            synth.synthesize(
                TEXT, "zh", ref_audio=ref_wav, prompt_text=PROMPT, prompt_lang="zh", seed=3
            )
        )
    a, b = (r.samples.astype(np.float64) for r in results)
    assert a.shape == b.shape and snr_db(a, b) >= 40.0


def test_streaming_yields_segments_that_add_up(tiny_bundle, ref_wav: Path) -> None:
    synth = Synthesizer.load(tiny_bundle("v2"), backend="onnxruntime")
    kwargs = {
        "ref_audio": ref_wav,
        "prompt_text": PROMPT,
        "prompt_lang": "zh",
        "seed": 1,
        "text_split_method": "cut5",
        "fragment_interval": 0.1,
    }
    chunks = list(synth.stream(TEXT, "zh", **kwargs))
    assert [c.index for c in chunks] == [0, 1]
    whole = synth.synthesize(TEXT, "zh", **kwargs)
    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks]), whole.samples)
    gap = int(0.1 * 32000)
    assert not chunks[0].samples[-gap:].any()


def test_ref_free_and_aux_references(tiny_bundle, ref_wav: Path) -> None:
    synth = Synthesizer.load(tiny_bundle("v2"), backend="onnxruntime")
    free = synth.synthesize(TEXT, "zh", ref_audio=ref_wav, ref_free=True, seed=0)
    assert free.seconds > 0.3
    voice = synth.voice(ref_wav, PROMPT, "zh", aux_ref_audio_paths=[ref_wav])
    assert voice.ge.shape[0] == 2
    np.testing.assert_allclose(voice.ge[0], voice.ge[1], rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": ""}, "nothing to speak"),
        ({"text": "。。。！"}, "nothing to speak"),
        ({"lang": "xx"}, "language"),
        ({"top_k": 0}, "top_k"),
        ({"bogus": 1}, "unknown option"),
        ({"prompt_text": ""}, "prompt_text is required"),
    ],
)
def test_bad_requests_are_input_errors(tiny_bundle, ref_wav: Path, kwargs, message) -> None:
    synth = Synthesizer.load(tiny_bundle("v2"), backend="onnxruntime")
    call = {"text": TEXT, "lang": "zh", "ref_audio": ref_wav, "prompt_text": PROMPT, **kwargs}
    with pytest.raises(InputError, match=message):
        synth.synthesize(call.pop("text"), call.pop("lang"), **call)


def test_runtime_needs_no_torch(tiny_bundle, ref_wav: Path) -> None:
    base = [r for r in requires("gsv-rt") or [] if "extra ==" not in r]
    assert base and not any(r.lower().startswith("torch") for r in base)
    code = textwrap.dedent(
        f"""
        import sys
        class _NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked")
        sys.meta_path.insert(0, _NoTorch())
        from gsv_runtime.synthesizer import Synthesizer
        synth = Synthesizer.load({str(tiny_bundle("v2Pro"))!r}, backend="openvino")
        result = synth.synthesize({TEXT!r}, "zh", ref_audio={str(ref_wav)!r},
                                  prompt_text={PROMPT!r}, prompt_lang="zh", seed=0)
        assert result.seconds > 0.5 and "torch" not in sys.modules
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_package_level_load(tiny_bundle, ref_wav: Path) -> None:
    import gsv_runtime

    tts = gsv_runtime.load(str(tiny_bundle("v1")), backend="onnxruntime")
    assert isinstance(tts, gsv_runtime.Synthesizer)
    audio = tts.synthesize(TEXT, "zh", ref_audio=ref_wav, prompt_text=PROMPT, seed=0)
    assert audio.sample_rate == 32000 and audio.seconds > 0.3


def test_g2pw_through_the_synthesizer(tiny_bundle, ref_wav: Path, tmp_path: Path) -> None:
    """A G2PWModel folder without its own tokenizer uses the support bundle's; results say so."""
    from gsv_runtime.text import phonemize
    from tests.test_frontend_g2pw import build_standin

    folder = build_standin(tmp_path / "G2PWModel")
    (folder / "tokenizer.json").unlink()
    root = tiny_bundle("v2")
    kwargs = {"ref_audio": ref_wav, "prompt_text": PROMPT, "prompt_lang": "zh", "seed": 3}
    plain = Synthesizer.load(root, backend="onnxruntime").synthesize(TEXT, "zh", **kwargs)
    synth = Synthesizer.load(root, backend="onnxruntime", g2pw_dir=folder)
    assert synth.g2pw is not None and synth.g2pw.tokenizer_path == synth.support.tokenizer_path
    result = synth.synthesize(TEXT, "zh", **kwargs)
    assert plain.metadata["text"]["zh_polyphones"] == "pypinyin"
    assert result.metadata["text"]["zh_polyphones"] == "g2pw"
    config = SynthesisConfig.from_options(text_split_method="cut5")
    ours = [s.phones.tolist() for s in synth.frontend(TEXT, "zh", config)]
    assert ours == [s.phone_ids for s in phonemize(TEXT, "zh", "v2", g2pw=synth.g2pw).segments]
