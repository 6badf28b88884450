"""The torch baseline's v3/v4/v5 acoustic stage: upstream's sequential ``using_vocoder_synthesis``
(v5: ``synthesize_v5_mel``).

``gsv_models`` (PyTorch eager, per stage the same numbers as upstream) runs the content encoder
(``decode_features``), the CFM's Euler loop over chunks of ``t_chunk`` frames, each prompted by
the previous chunk's tail, and the vocoder over the whole mel, exactly as
``TTS.using_vocoder_synthesis`` does. The start noise comes from the runtime's
:class:`~gsv_runtime.acoustic.NoiseSource` (the same frames the runtime uses). Stages go to the
bench's clock under the runtime engine's names: ``cfm_encoder``, ``cfm_dit`` (text and step
embedding plus each velocity call, recorded with its rows and frames) and ``cfm_vocoder``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from gsv_bench.timers import StageClock
from gsv_runtime.acoustic import NoiseSource
from gsv_runtime.acoustic.cfm_host import CfmParams
from gsv_runtime.errors import BackendError


def load_vocoder(path: str | Path, device: str) -> Any:
    """Upstream's vocoder: a BigVGAN folder (v3) or ``vocoder.pth`` (v4), eval mode."""
    path = Path(path)
    if path.is_dir():
        from gsv_models.bigvgan import load_bigvgan

        return load_bigvgan(path).to(device)
    from gsv_models.vocoder_v4 import load_v4_vocoder

    return load_v4_vocoder(path).eval().to(device)


class TorchCfm:
    """One v3/v4/v5 SoVITS + vocoder in PyTorch eager, timed into ``clock``."""

    def __init__(
        self,
        sovits: Any,
        vocoder: Any,
        params: CfmParams,
        clock: StageClock,
        device: str = "cpu",
    ) -> None:
        self.sovits, self.vocoder, self.params = sovits, vocoder, params
        self.clock, self.device = clock, device
        dit = sovits.cfm.estimator
        velocity = dit.velocity

        def timed_velocity(x: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = velocity(x, *args, **kwargs)
            self._sync()
            clock.dit_step(time.perf_counter() - t0, int(x.shape[0]), int(x.shape[-1]))
            return out

        # an instance attribute shadows the method CFM.sample calls (bench-only instrumentation)
        dit.velocity = timed_velocity

    @classmethod
    def load(
        cls, sovits: Any, vocoder_path: str | None, audio: dict, clock: StageClock, device: str
    ) -> TorchCfm:
        """From the loaded SoVITS, the vocoder's path and the bundle's ``audio`` section.

        Raises:
            BackendError: no vocoder path (the baseline needs upstream's vocoder file).
        """
        if not vocoder_path:
            raise BackendError("the torch baseline of a v3/v4 voice needs its vocoder")
        vocoder = load_vocoder(vocoder_path, device)
        return cls(sovits, vocoder, CfmParams.from_audio(audio), clock, device)

    def _sync(self) -> None:
        if self.device != "cpu":
            import torch

            torch.cuda.synchronize()

    def _features(self, codes: Any, phones: Any, ge: Any) -> Any:
        import torch

        dev = self.device
        t0 = time.perf_counter()
        fea, _ = self.sovits.decode_features(
            torch.as_tensor(np.asarray(codes, np.int64), device=dev)[None],
            torch.tensor([len(codes)], device=dev),
            torch.as_tensor(np.asarray(phones, np.int64), device=dev)[None],
            torch.tensor([len(phones)], device=dev),
            ge,
            1.0,
        )
        self._sync()
        self.clock.add("cfm_encoder", time.perf_counter() - t0)
        return fea

    def synthesize(
        self, codes: Any, phones: Any, voice: Any, noise: NoiseSource, steps: int
    ) -> int:
        """One segment's waveform; returns its number of samples."""
        import torch

        from gsv_models.cfm import SamplerConfig

        p, dev = self.params, self.device
        ge = torch.from_numpy(np.asarray(voice.ge[:1], np.float32)).to(dev)
        fea_ref = self._features(voice.prompt_tokens, voice.prompt_phones, ge)
        fea_todo = self._features(codes, phones, ge)
        mel2 = torch.from_numpy(p.normalize(np.asarray(voice.ref_mel, np.float32)))[None].to(dev)
        t_min = min(mel2.shape[2], fea_ref.shape[2])
        mel2, fea_ref = mel2[:, :, :t_min], fea_ref[:, :, :t_min]
        if t_min > p.t_ref:
            mel2, fea_ref, t_min = mel2[:, :, -p.t_ref :], fea_ref[:, :, -p.t_ref :], p.t_ref
        sampler = SamplerConfig(steps, p.temperature, p.cfg_rate, p.cfg_drops_text)
        mel_dim = mel2.shape[1]
        if p.tail_frames > 0:
            mel = self._sample_v5(fea_ref, fea_todo, mel2, noise, sampler)
            return self._vocode(mel)
        chunk_len = p.t_chunk - t_min
        outs, idx = [], 0
        while idx < fea_todo.shape[-1]:
            chunk = fea_todo[:, :, idx : idx + chunk_len]
            mu = torch.cat([fea_ref, chunk], 2)
            prompt = mel2.shape[2]  # t_min, or a short last chunk's length after it
            x0 = torch.zeros(1, mel_dim, mu.shape[2], device=dev)
            x0[0, :, prompt:] = torch.from_numpy(
                noise.frames(mel_dim, idx, idx + chunk.shape[2])
            ).to(dev)
            n0, t0 = len(self.clock.dit), time.perf_counter()
            res = self.sovits.cfm.sample(mu, mel2, x0, sampler)[:, :, prompt:]
            self._sync()
            stepped = sum(s.seconds for s in self.clock.dit[n0:])  # already in cfm_dit
            self.clock.add("cfm_dit", time.perf_counter() - t0 - stepped)
            mel2, fea_ref = res[:, :, -t_min:], chunk[:, :, -t_min:]
            outs.append(res)
            idx += chunk_len
        if not outs:
            return 0
        return self._vocode(torch.cat(outs, 2))

    def _sample_v5(
        self, fea_ref: Any, fea_todo: Any, mel2: Any, noise: NoiseSource, sampler: Any
    ) -> Any:
        """v5: upstream's ``synthesize_v5_mel`` (:func:`gsv_models.cfm.sample_v5_chunks`)."""
        import torch

        from gsv_models.cfm import sample_v5_chunks

        mel_dim = mel2.shape[1]

        def start_noise(start: int, stop: int) -> Any:
            return torch.from_numpy(noise.frames(mel_dim, start, stop))[None].to(self.device)

        n0, t0 = len(self.clock.dit), time.perf_counter()
        mel = sample_v5_chunks(self.sovits.cfm, fea_ref, fea_todo, mel2, start_noise, sampler)
        self._sync()
        stepped = sum(s.seconds for s in self.clock.dit[n0:])  # already in cfm_dit
        self.clock.add("cfm_dit", time.perf_counter() - t0 - stepped)
        return mel

    def _vocode(self, mel: Any) -> int:
        """The vocoder over a whole normalised mel; returns the number of samples."""
        import torch

        mel = torch.from_numpy(self.params.denormalize(mel.cpu().numpy())).to(self.device)
        t0 = time.perf_counter()
        wav = self.vocoder(mel)
        self._sync()
        self.clock.add("cfm_vocoder", time.perf_counter() - t0)
        return int(wav.shape[-1])
