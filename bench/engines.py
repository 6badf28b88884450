"""The measured pipelines: the gsv runtime (onnxruntime / OpenVINO) and the PyTorch baseline.

Both expose the same three calls, ``load()``, ``stream(item, batch)`` and
``prepare_reference()``, and record their stages into a :class:`~gsv_bench.timers.StageClock`:

``frontend``  text normalisation, segmentation and G2P (BERT excluded)
``bert``      BERT features of Chinese text (support bundle)
``gpt_prefill`` / ``gpt_steps``  the GPT graphs (each step also recorded on its own)
``gpt_host``  the rest of the GPT stage: sampling, stop rules, batching on the host
``sovits``    SoVITS decoding to a waveform (v3/v4: the acoustic stage's rest — prompt
              handling, chunking, host Euler updates — beside the three stages below)
``cfm_encoder`` v3/v4: the content encoder (codes + phones → mel-rate features)
``cfm_dit``   v3/v4: the DiT, text embedding plus every Euler step (each step also recorded
              on its own with its rows and mel frames)
``cfm_vocoder`` v3/v4: BigVGAN (v3) / the 48 kHz vocoder (v4)
``hubert`` / ``sv`` / ``ref_codes`` / ``ref_encoder``  voice preparation (timed separately)

The runtime engine drives the public ``Synthesizer.stream`` and wraps the graphs it calls with
timers; nothing of the runtime is changed. The baseline runs ``gsv_models`` (PyTorch eager, the
upstream-equivalent reference) for the GPT and SoVITS; its text frontend and BERT are the
runtime's (onnxruntime fp32), so the two differ only where the speed-up is claimed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from gsv_bench.assets import Assets
from gsv_bench.scenarios import BenchPoint, Settings, TextItem
from gsv_bench.timers import StageClock
from gsv_runtime.bundle import Bundle
from gsv_runtime.config import SynthesisConfig
from gsv_runtime.errors import BackendError
from gsv_runtime.voice import Voice

STAGES: Final = (
    "frontend",
    "bert",
    "gpt_prefill",
    "gpt_steps",
    "gpt_host",
    "sovits",
    "cfm_encoder",
    "cfm_dit",
    "cfm_vocoder",
)
"""Per-request stages in pipeline order (the stacked bars)."""
CFM_STAGES: Final = ("cfm_encoder", "cfm_dit", "cfm_vocoder")
"""The parts of a v3/v4 voice's acoustic stage timed on their own (zero for v1/v2)."""
REFERENCE_STAGES: Final = ("hubert", "sv", "ref_codes", "ref_encoder", "bert")

VALUE_BYTES: Final[dict[tuple[str, str], tuple[float, float]]] = {
    ("torch", "fp32"): (4, 4),
    ("onnxruntime", "fp32"): (4, 4),
    ("onnxruntime", "fp16"): (2, 2),
    ("onnxruntime", "int8"): (1, 4),
    ("openvino", "fp32"): (4, 4),
    ("openvino", "fp16"): (2, 4),
    ("openvino", "bf16"): (2, 2),
    ("openvino", "int8"): (1, 1),
}
"""(bytes per GPT weight, bytes per KV value) as each backend holds them. OpenVINO fp16 IRs run
with an f32 hint and an f32 cache, but the CPU plugin keeps the fully-connected weights in f16
and widens them inside the kernel (its step time matches bf16's, not fp32's); bf16 is the CPU
plugin's bf16 inference hint; int8 OpenVINO keeps weights and the KV cache (KV_CACHE_PRECISION
u8) in 8 bits; onnxruntime int8 is dynamic quantisation of the weights with an fp32 cache.
These are assumptions about the backends' kernels, stated with every figure."""


@dataclass(frozen=True)
class Chunk:
    """What a request yields per segment: samples produced and semantic tokens decoded."""

    samples: int
    tokens: int


def runtime_device(engine: str, device: str) -> str:
    """The device string each backend expects for ``cpu`` / ``gpu``."""
    if device == "cpu":
        return "cpu"
    return "GPU" if engine == "openvino" else "cuda"


def gpu_unavailable(engine: str) -> str | None:
    """Why the GPU path cannot run here (None when it can), with what would fix it."""
    if engine == "onnxruntime":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return (
                "no CUDA execution provider in this onnxruntime: GPU runs need an NVIDIA GPU "
                "and onnxruntime-gpu (pip install onnxruntime-gpu)"
            )
        return None
    if engine == "openvino":
        try:
            import openvino as ov
        except ImportError:
            return "OpenVINO is not installed (pip install openvino)"
        if not any(d.startswith("GPU") for d in ov.Core().available_devices):
            return "OpenVINO sees no GPU device here (Intel GPU driver and plugin needed)"
        return None
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install gsv-rt[export])"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device here (a CUDA build of torch and an NVIDIA GPU needed)"
    return None


def _request_config(
    settings: Settings, item: TextItem, batch: int, sample_steps: int | None = None
) -> SynthesisConfig:
    return SynthesisConfig.from_options(
        sample_steps=sample_steps,
        seed=settings.seed,
        fixed_length=settings.fixed_length,
        text_split_method=item.split,
        batch_size=batch,
        fragment_interval=0.0,  # audio_s counts synthesized audio only, no inserted silence
    )


class _TimedSession:
    """A T2S session whose prefill and steps are timed (context = padded prefix + steps)."""

    def __init__(self, inner: Any, clock: StageClock) -> None:
        self._inner = inner
        self._clock = clock
        self._context = 0
        self.design = inner.design

    @property
    def batch(self) -> int:
        return int(self._inner.batch)

    def prefill(self, phones, phone_lens, bert, prompt, prompt_lens):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        out = self._inner.prefill(phones, phone_lens, bert, prompt, prompt_lens)
        self._clock.add("gpt_prefill", time.perf_counter() - t0)
        self._context = phones.shape[1] + (0 if prompt is None else prompt.shape[1])
        return out

    def step(self, tokens: np.ndarray) -> np.ndarray:
        self._context += 1
        t0 = time.perf_counter()
        out = self._inner.step(tokens)
        self._clock.step(time.perf_counter() - t0, len(tokens), self._context)
        return out

    def join(self, phones, phone_lens, bert, prompt, prompt_lens):  # type: ignore[no-untyped-def]
        # a session outlives its requests: a join into an empty batch starts a new context
        live = self._context if self._inner.batch else 0
        t0 = time.perf_counter()
        out = self._inner.join(phones, phone_lens, bert, prompt, prompt_lens)
        self._clock.add("gpt_prefill", time.perf_counter() - t0)
        self._context = max(live, phones.shape[1] + (0 if prompt is None else prompt.shape[1]))
        return out

    def keep(self, rows: Any) -> None:
        self._inner.keep(rows)


class _TimedDecoder:
    """Stands in for ``Synthesizer.t2s``: every session it opens is timed."""

    def __init__(self, inner: Any, clock: StageClock) -> None:
        self._inner = inner
        self._clock = clock
        self.design, self.backend, self.precision = inner.design, inner.backend, inner.precision

    def session(self) -> _TimedSession:
        return _TimedSession(self._inner.session(), self._clock)


def _time_support(support: Any, clock: StageClock) -> None:
    for method, stage in (
        ("hubert_features", "hubert"),
        ("bert_features", "bert"),
        ("speaker_vector", "sv"),
    ):
        setattr(support, method, clock.wrap(getattr(support, method), stage))


def _cfm_steps(acoustic: Any, steps: int | None) -> dict[str, int]:
    """``{"sample_steps": n}`` a CFM stage runs with (empty for v1/v2)."""
    sampler = getattr(acoustic, "default_sampler", None)
    return {"sample_steps": steps or sampler().steps} if sampler is not None else {}


def _time_cfm(acoustic: Any, clock: StageClock) -> None:
    """Time a CFM stage's graphs (no-op for v1/v2): encoder, DiT (embedding + each step with its
    rows and frames) and vocoder."""
    runners = getattr(acoustic, "runners", None)
    if not isinstance(runners, dict) or "cfm_step" not in runners:
        return
    for graph, stage in (
        ("cfm_encoder", "cfm_encoder"),
        ("cfm_embed", "cfm_dit"),
        ("cfm_vocoder", "cfm_vocoder"),
    ):
        if graph in runners:
            runners[graph].run = clock.wrap(runners[graph].run, stage)
    step = runners["cfm_step"]
    run = step.run

    def timed_step(feeds: dict[str, np.ndarray]) -> Any:
        t0 = time.perf_counter()
        out = run(feeds)
        x = feeds["x"]
        clock.dit_step(time.perf_counter() - t0, int(x.shape[0]), int(x.shape[-1]))
        return out

    step.run = timed_step


class RuntimeEngine:
    """The gsv runtime on one backend, device, precision and thread count."""

    def __init__(self, assets: Assets, point: BenchPoint, settings: Settings) -> None:
        self.assets, self.point, self.settings = assets, point, settings
        self.clock = StageClock()
        self.synth: Any = None
        self.voice: Voice | None = None
        self.sample_rate = 0

    def load(self, needs_bert: bool, needs_reference: bool) -> float:
        """Compile the voice's graphs (and the support graphs the run will use); seconds."""
        from gsv_runtime.config import RuntimeConfig
        from gsv_runtime.synthesizer import Synthesizer

        p = self.point
        runtime = RuntimeConfig(
            backend=p.engine,
            device=runtime_device(p.engine, p.device),
            threads=p.threads_per_worker,
            precision=p.precision,
        )
        t0 = time.perf_counter()
        synth = Synthesizer(Bundle.load(self.assets.voice_dir), runtime, self.assets.support_dir)
        if needs_bert or needs_reference:
            support = synth.support
            for graph in ("bert",) if needs_bert else ():
                support.runner(graph)
            if needs_reference:
                for graph in ("hubert", "sv") if synth.is_pro else ("hubert",):
                    support.runner(graph)
        seconds = time.perf_counter() - t0
        synth.model.t2s = _TimedDecoder(synth.t2s, self.clock)
        if needs_bert or needs_reference:
            _time_support(synth.support, self.clock)
        _time_cfm(synth.sovits, self.clock)
        synth.sovits.prompt_codes = self.clock.wrap(synth.sovits.prompt_codes, "ref_codes")
        synth.sovits.reference = self.clock.wrap(synth.sovits.reference, "ref_encoder")
        self.synth = synth
        self.voice = Voice.load(self.assets.voice_root, self.assets.voice_name)
        self.sample_rate = synth.sample_rate
        return seconds

    def effective(self) -> dict[str, Any]:
        """What actually ran: GPT design and graph precision, backend device."""
        return {
            "t2s_design": self.synth.t2s.design,
            "t2s_precision": self.synth.t2s.precision,
            "stage_precisions": dict(self.synth.model.precisions),
            "stage_backends": dict(self.synth.model.backends),
            "device": runtime_device(self.point.engine, self.point.device),
            **_cfm_steps(self.synth.sovits, self.point.sample_steps),
        }

    def stream(self, item: TextItem, batch: int) -> Iterator[Chunk]:
        """Synthesize one request through ``Synthesizer.stream``; yields per segment."""
        config = _request_config(self.settings, item, batch, self.point.sample_steps)
        report: dict[str, Any] = {}
        chunks = self.synth.stream(
            item.text, item.lang, self.voice, report=report, **_options(config)
        )
        for chunk in chunks:
            yield Chunk(len(chunk.samples), chunk.tokens)
        t = report["timings"]
        self.clock.add("frontend_total", t["frontend"])
        self.clock.add("gpt_total", t["t2s"])
        self.clock.add("sovits", t["sovits"])

    def prepare_reference(self) -> float:
        """One voice preparation from the reference clip (HuBERT, SV, encoders); seconds."""
        a = self.assets
        t0 = time.perf_counter()
        self.synth.voice(a.ref_wav, a.prompt_text, a.prompt_lang)
        return time.perf_counter() - t0


def _options(config: SynthesisConfig) -> dict[str, Any]:
    return {
        "seed": config.seed,
        "fixed_length": config.fixed_length,
        "text_split_method": config.text_split_method,
        "batch_size": config.batch_size,
        "fragment_interval": config.fragment_interval,
        "sample_steps": config.sample_steps,
    }


class TorchEngine:
    """The PyTorch-eager baseline: gsv_models GPT + SoVITS with the runtime's text frontend."""

    def __init__(self, assets: Assets, point: BenchPoint, settings: Settings) -> None:
        if not (assets.gpt and assets.sovits):
            raise BackendError(
                "the torch baseline needs the source checkpoints (--gpt and --sovits)"
            )
        self.assets, self.point, self.settings = assets, point, settings
        self.clock = StageClock()
        self.manifest = Bundle.load(assets.voice_dir).manifest
        self.sample_rate = int(self.manifest.audio["sample_rate"])
        self.bert_dim = int(self.manifest.text.get("bert_dim", 1024))
        self.symbols_version = str(self.manifest.text.get("symbols_version", "v2"))
        self.support: Any = None
        self.device = runtime_device("torch", point.device)
        self.sample_steps: int | None = None
        self.cfm: Any = None
        """v3/v4: the acoustic stage in torch (:class:`gsv_bench.torch_cfm.TorchCfm`)."""

    def load(self, needs_bert: bool, needs_reference: bool) -> float:
        """Load both checkpoints onto the device (and BERT if needed); seconds."""
        import torch

        from gsv_models.load import load_model

        torch.set_num_threads(self.point.threads_per_worker)
        torch.set_grad_enabled(False)
        t0 = time.perf_counter()
        _, self.gpt = load_model(self.assets.gpt, "gpt")
        _, self.sovits = load_model(self.assets.sovits, "sovits")
        self.gpt.to(self.device)
        self.sovits.to(self.device)
        if self.manifest.audio.get("family") == "cfm":
            from gsv_bench.torch_cfm import TorchCfm

            self.cfm = TorchCfm.load(
                self.sovits, self.assets.vocoder, self.manifest.audio, self.clock, self.device
            )
        if needs_bert:
            from gsv_runtime.backends import RunnerOptions
            from gsv_runtime.support import SupportModels

            options = RunnerOptions(threads=self.point.threads_per_worker)
            self.support = SupportModels.load(self.assets.support_dir, "onnxruntime", options)
            self.support.runner("bert")
            self.support.bert_features = self.clock.wrap(self.support.bert_features, "bert")
        seconds = time.perf_counter() - t0
        self._time_gpt()
        voice = Voice.load(self.assets.voice_root, self.assets.voice_name)
        self.saved_voice = voice
        self.voice = {
            "phones": torch.from_numpy(voice.prompt_phones).to(self.device),
            "bert": torch.from_numpy(voice.prompt_bert).to(self.device),
            "tokens": torch.from_numpy(voice.prompt_tokens).to(self.device),
            "ge": torch.from_numpy(voice.mean_ge).to(self.device),
        }
        self.params = SynthesisConfig().sampling(self.manifest.sampling)
        return seconds

    def _sync(self) -> None:
        if self.device != "cpu":
            import torch

            torch.cuda.synchronize()

    def _time_gpt(self) -> None:
        prefill, step, clock = self.gpt.prefill, self.gpt.step, self.clock

        def timed_prefill(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = prefill(*args, **kwargs)
            self._sync()
            clock.add("gpt_prefill", time.perf_counter() - t0)
            return out

        def timed_step(tokens: Any, positions: Any, slots: Any, cache: Any) -> Any:
            t0 = time.perf_counter()
            out = step(tokens, positions, slots, cache)
            self._sync()
            clock.step(time.perf_counter() - t0, int(tokens.shape[0]), int(slots.max()) + 1)
            return out

        # instance attributes shadow the methods generate() calls (bench-only instrumentation)
        self.gpt.prefill, self.gpt.step = timed_prefill, timed_step

    def effective(self) -> dict[str, Any]:
        """What actually ran."""
        import torch

        out = {"t2s_design": "torch-eager", "t2s_precision": "fp32", "torch": torch.__version__}
        if self.cfm is not None:
            out["sample_steps"] = self.point.sample_steps or self.cfm.params.steps
        return out

    def _segments(self, item: TextItem, config: SynthesisConfig) -> list[tuple[Any, Any]]:
        from gsv_runtime.text import phonemize

        out = []
        for seg in phonemize(
            item.text, item.lang, self.symbols_version, split_method=config.text_split_method
        ).segments:
            feats = []
            for piece in seg.pieces:
                if piece.needs_bert:
                    feats.append(self.support.bert_features(piece.norm_text, list(piece.word2ph)))
                else:
                    feats.append(np.zeros((len(piece.phones), self.bert_dim), np.float32))
            out.append((np.asarray(seg.phone_ids, np.int64), np.concatenate(feats, axis=0)))
        return out

    def stream(self, item: TextItem, batch: int) -> Iterator[Chunk]:
        """Same request as the runtime engine, with GPT and SoVITS in PyTorch eager."""
        config = _request_config(self.settings, item, batch, self.point.sample_steps)
        self.sample_steps = config.sample_steps
        t0 = time.perf_counter()
        segments = self._segments(item, config)
        self.clock.add("frontend_total", time.perf_counter() - t0)
        for start in range(0, len(segments), batch):
            rows = segments[start : start + batch]
            t1 = time.perf_counter()
            tokens = self._generate(rows, start)
            t2 = time.perf_counter()
            wavs = self._decode(rows, tokens, start)
            self._sync()
            self.clock.add("gpt_total", t2 - t1)
            self.clock.add("sovits", time.perf_counter() - t2)
            for tok, wav in zip(tokens, wavs, strict=True):
                yield Chunk(int(wav), len(tok))

    def _generate(self, rows: Sequence[tuple[Any, Any]], start: int) -> list[Any]:
        import torch

        v, dev = self.voice, self.device
        phones = [torch.cat([v["phones"], torch.from_numpy(p).to(dev)]) for p, _ in rows]
        berts = [torch.cat([v["bert"], torch.from_numpy(b).to(dev)]) for _, b in rows]
        lens = torch.tensor([len(p) for p in phones], device=dev)
        x = torch.nn.utils.rnn.pad_sequence(phones, batch_first=True)
        bert = torch.nn.utils.rnn.pad_sequence(berts, batch_first=True)
        prompt = v["tokens"].expand(len(rows), -1)
        gen = torch.Generator(device=dev).manual_seed(self.settings.seed * 1000 + start)
        return self.gpt.generate(  # type: ignore[no-any-return]
            x,
            lens,
            bert,
            prompt,
            params=self.params,
            fixed_length=self.settings.fixed_length,
            generator=gen,
        )

    def _decode(self, rows: Sequence[tuple[Any, Any]], tokens: Sequence[Any], start: int) -> Any:
        import torch

        dev = self.device
        keep = [i for i, t in enumerate(tokens) if len(t)]
        samples = [0] * len(tokens)
        if not keep:
            return samples
        if self.cfm is not None:  # v3/v4: segment by segment, as the runtime's stage does
            from gsv_runtime.acoustic import NoiseSource

            steps = self.sample_steps or self.cfm.params.steps
            for i in keep:
                noise = NoiseSource((self.settings.seed, start + i))
                codes = tokens[i].cpu().numpy()
                samples[i] = self.cfm.synthesize(codes, rows[i][0], self.saved_voice, noise, steps)
            return samples
        codes = torch.nn.utils.rnn.pad_sequence([tokens[i] for i in keep], batch_first=True)
        phones = torch.nn.utils.rnn.pad_sequence(
            [torch.from_numpy(rows[i][0]).to(dev) for i in keep], batch_first=True
        )
        torch.manual_seed(self.settings.seed * 1000 + start)
        _, lengths = self.sovits.decode(
            codes,
            torch.tensor([len(tokens[i]) for i in keep], device=dev),
            phones,
            torch.tensor([len(rows[i][0]) for i in keep], device=dev),
            self.voice["ge"].expand(len(keep), -1, -1),
            noise_scale=float(self.manifest.sampling.get("noise_scale", 0.5)),
        )
        for i, n in zip(keep, lengths.tolist(), strict=True):
            samples[i] = int(n)
        return samples

    def prepare_reference(self) -> float | None:
        """Not measured for the baseline (voice preparation is the runtime's in both)."""
        return None


def make_engine(assets: Assets, point: BenchPoint, settings: Settings) -> Any:
    """The engine of ``point.engine``."""
    if point.engine == "torch":
        return TorchEngine(assets, point, settings)
    return RuntimeEngine(assets, point, settings)


def value_bytes(engine: str, precision: str) -> tuple[float, float]:
    """(weight, KV) bytes per value for the bandwidth bound; fp32 when unknown."""
    return VALUE_BYTES.get((engine, precision), (4, 4))
