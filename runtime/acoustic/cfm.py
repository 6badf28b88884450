"""CFM stage (v3/v4): content features → flow-matching mel (host Euler loop) → vocoder waveform.

Runs the graphs that ``gsv_export.cfm`` writes (their I/O is documented there) with numpy on
the host, following upstream ``TTS_infer_pack/TTS.py::using_vocoder_synthesis`` (sequential
mode):

1. ``fea_ref`` = content features of the prompt (its tokens and phones, speed 1) and the
   target's features (at the request's speed), both conditioned on the first reference's ``ge``
   (upstream reads only the main reference for v3/v4);
2. the prompt mel is the voice's reference log-mel normalised to [-1, 1]; both are cut to their
   common length ``T_min``, at most ``T_ref`` (the last frames);
3. the target is cut into chunks of ``T_chunk − T_min`` frames; each chunk runs the Euler loop
   on ``[prompt | chunk]`` and keeps the chunk's frames; the next chunk's prompt is the last
   ``T_min`` frames of this output and of this chunk's features;
4. the chunks' mels, denormalised, go through the vocoder in one call.

The start noise of a chunk's frames comes from the job's :class:`NoiseSource` at the target's
mel frames, so a seed reproduces the audio on any backend. Classifier-free guidance (off in
v3/v4, ``cfg_rate`` 0) runs its two passes as one batch of two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

import numpy as np

from gsv_runtime.acoustic import NoiseSource, VocodeJob, compile_graphs
from gsv_runtime.acoustic.cfm_host import (
    CFG_THRESHOLD,
    OVERLAP_FRAMES,
    CfmParams,
    Sampler,
    feature_frames,
    feature_lengths,
    sola_join,
    stretched_frames,
)
from gsv_runtime.acoustic.sovits import PROMPT, REF, pad_rows, run_prompt
from gsv_runtime.audio_features import log_mel_spectrogram, sinc_resample
from gsv_runtime.backends import BackendName, GraphRunner, RunnerOptions
from gsv_runtime.bundle import Bundle, GraphSpec, check_graph_io
from gsv_runtime.errors import BundleError, InputError

ENCODER: Final = "cfm_encoder"
EMBED: Final = "cfm_embed"
STEP: Final = "cfm_step"
VOCODER: Final = "cfm_vocoder"
GRAPHS: Final = (PROMPT, REF, ENCODER, EMBED, STEP, VOCODER)
SYNTH_GRAPHS: Final = (ENCODER, EMBED, STEP, VOCODER)
"""What synthesis needs once a voice is prepared."""


class CfmStage:
    """The CFM graphs of one v3/v4 voice bundle on one backend (see the module docstring).

    Build it with :meth:`from_bundle`, or inject runners with the graphs' declarations.
    ``sovits_prompt`` and ``sovits_ref`` are optional (a prepared voice needs neither).
    """

    token_streaming = False
    """The engine refuses ``stream="token"``: upstream has no streaming for v3/v4, and a
    window decoded alone would restart the flow's prompt at every window."""

    def __init__(
        self, specs: Mapping[str, GraphSpec], runners: Mapping[str, GraphRunner], params: CfmParams
    ) -> None:
        """Check each runner's input and output names against its declaration.

        Raises:
            BundleError: a synthesis graph is missing, or a runner's I/O differs from its spec.
        """
        missing = [g for g in SYNTH_GRAPHS if g not in runners or g not in specs]
        if missing:
            raise BundleError(f"the CFM stage needs the graphs {', '.join(missing)}")
        for name, runner in runners.items():
            spec = specs.get(name)
            if spec is None:
                raise BundleError(f"runner {name!r} has no graph declaration")
            check_graph_io(name, spec, runner.input_names, runner.output_names)
        self.specs = dict(specs)
        self.runners = dict(runners)
        self.params = params
        step = specs[STEP].inputs
        self.mel_dim = int(step["x"].shape[1])
        self.text_dim = int(step["text"].shape[2])
        self.ge_channels = int(specs[ENCODER].inputs["ge"].shape[1])
        self.sample_rate = params.sample_rate
        self.samples_per_token = round(2 * params.feature_upsample * params.hop)
        """Output samples per 25 Hz token at speed 1 (960 v3, 1920 v4)."""

    @classmethod
    def from_bundle(
        cls,
        bundle: Bundle,
        backend: BackendName = "onnxruntime",
        options: RunnerOptions | None = None,
        precision: str = "fp32",
        graphs: Sequence[str] = GRAPHS,
    ) -> CfmStage:
        """Compile ``graphs`` (default: all six) of a v3/v4 voice bundle.

        Raises:
            BundleError: a graph or variant is missing, the audio section is incomplete, or a
                graph's I/O differs from the manifest.
            BackendError: the backend cannot compile a graph.
        """
        params = CfmParams.from_audio(bundle.manifest.audio, str(bundle.root))
        return cls(*compile_graphs(bundle, graphs, backend, options, precision), params)

    def _runner(self, name: str) -> GraphRunner:
        try:
            return self.runners[name]
        except KeyError:
            raise BundleError(f"this CFM stage was built without the {name} graph") from None

    # ------------------------------------------------------------------ voice preparation

    def prompt_codes(self, ssl_features: np.ndarray) -> np.ndarray:
        """HuBERT features ``[768, T50]`` or ``[B, 768, T50]`` → prompt codes (25 Hz).

        Raises:
            InputError: wrong rank or channel count, or fewer than 2 frames.
        """
        return run_prompt(self.specs.get(PROMPT), self._runner(PROMPT), ssl_features)

    def reference(self, spec: np.ndarray, sv: np.ndarray | None = None) -> np.ndarray:
        """Linear spectrogram ``[1025, T]`` of the 32 kHz reference → ``ge [1, gin, 1]``.

        Raises:
            InputError: a bad shape, or a speaker vector (v3/v4 take none).
        """
        if sv is not None:
            raise InputError("v3/v4 voices take no speaker vector")
        spec = np.asarray(spec, dtype=np.float32)
        if spec.ndim != 2 or spec.shape[1] < 1:
            raise InputError(f"spec must be [bins, T], got shape {spec.shape}")
        feeds = {
            "spec": np.ascontiguousarray(spec[None]),
            "spec_lengths": np.array([spec.shape[1]], dtype=np.int64),
        }
        return self._runner(REF).run(feeds)["ge"]

    def reference_mel(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """The voice's prompt mel: log-mel ``[n_mels, T]`` of the reference clip.

        Upstream (``TTS.py::using_vocoder_synthesis``) reads the file's raw mono samples (no
        peak limiting), resamples them with torchaudio's default to the mel rate (24 kHz v3,
        32 kHz v4) and takes ``mel_spectrogram_torch``; here :func:`sinc_resample` and
        :func:`log_mel_spectrogram` are those steps. Not reproduced: when a float file is
        mono at exactly 32 kHz and peaks above 1, upstream's ``_get_ref_spec`` has already
        divided those cached samples by ``min(2, peak)`` in place.

        Raises:
            InputError: no audio, or too short for one frame.
        """
        if wav is None or np.asarray(wav).ndim != 1 or sample_rate <= 0:
            raise InputError("reference_mel needs the reference's mono samples and their rate")
        m = self.params.mel
        rate = int(m["sample_rate"])
        audio = sinc_resample(np.asarray(wav, dtype=np.float32), int(sample_rate), rate)
        fmax = None if m.get("fmax") is None else float(m["fmax"])
        return log_mel_spectrogram(
            audio,
            rate,
            int(m["n_fft"]),
            int(m["hop"]),
            int(m["win"]),
            int(m["n_mels"]),
            float(m.get("fmin", 0.0)),
            fmax,
        )

    # ------------------------------------------------------------------ stages

    def features(
        self,
        codes_list: Sequence[np.ndarray],
        phones_list: Sequence[np.ndarray],
        ge: np.ndarray,
        speed: float | Sequence[float] = 1.0,
    ) -> list[np.ndarray]:
        """Content features per row, ``[text_dim, F_i]`` at the mel frame rate.

        ``F_i`` counts every frame the up-sampling yields (upstream's ``decode_encp`` keeps the
        masked last frame of some v4 lengths at speed ≠ 1, as zeros).

        Raises:
            InputError: empty rows, negative ids, bad ``ge`` or speed.
        """
        b = len(codes_list)
        if b == 0 or len(phones_list) != b:
            raise InputError(f"need ≥ 1 row and as many phone rows ({len(phones_list)}) as codes")
        codes = [np.asarray(c, dtype=np.int64).ravel() for c in codes_list]
        phones = [np.asarray(p, dtype=np.int64).ravel() for p in phones_list]
        for kind, rows in (("codes", codes), ("phones", phones)):
            if any(r.size == 0 for r in rows) or any(int(r.min()) < 0 for r in rows):
                raise InputError(f"every row of {kind} must be non-empty with ids ≥ 0")
        speeds = [float(speed)] * b if np.isscalar(speed) else [float(s) for s in speed]  # type: ignore[union-attr]
        if len(speeds) != b or not all(0 < s < 100 for s in speeds):
            raise InputError(f"speed must be in (0, 100), one value or one per row; got {speed}")
        p = self.params
        n = [c.size for c in codes]
        frames50 = stretched_frames(n, speeds)
        feeds = {
            "codes": pad_rows(codes),
            "code_lengths": np.array(n, dtype=np.int64),
            "phones": pad_rows(phones),
            "phone_lengths": np.array([x.size for x in phones], dtype=np.int64),
            "ge": self._batch_ge(ge, b),
            "frame_lengths": frames50,
            "feature_lengths": feature_lengths(
                n, speeds, p.feature_upsample, p.mask_frames_per_code
            ),
        }
        out = self._runner(ENCODER).run(feeds)["features"]
        frames = feature_frames(frames50, p.feature_upsample)
        return [np.array(out[i, :, : int(f)], dtype=np.float32) for i, f in enumerate(frames)]

    def sample(
        self, mu: np.ndarray, prompt: np.ndarray, noise: np.ndarray, sampler: Sampler
    ) -> np.ndarray:
        """Euler-integrate chunks from noise (t = 0) to normalised mels (t = 1).

        Mirrors upstream ``module/models.py::CFM.inference``: prompt frames of ``x`` are zero
        at the start and after every step, time accumulates in Python floats, the text and
        step embeddings are computed once. Guidance runs its second pass in the same batch.

        Args:
            mu: content features ``[text_dim, T]``, or ``[B, text_dim, T]`` for B chunks of
                equal length (prompt frames first).
            prompt: normalised prompt mel ``[mel, P]``, ``P ≤ T``, shared by every row.
            noise: standard-normal start noise ``[mel, T]`` / ``[B, mel, T]`` (the first ``P``
                frames unused).
            sampler: steps, temperature, guidance.

        Returns:
            ``[mel, T]`` / ``[B, mel, T]`` float32; the first ``P`` frames are zero.
        """
        sampler.validate()
        single = mu.ndim == 2
        mu3, noise3 = (mu[None], noise[None]) if single else (mu, noise)
        b, c, t = mu3.shape
        p = prompt.shape[1]
        if noise3.shape != (b, self.mel_dim, t) or prompt.shape[0] != self.mel_dim or p > t:
            raise InputError(
                f"noise must be [{self.mel_dim}, {t}] per row and the prompt "
                f"[{self.mel_dim}, ≤{t}]; got {noise.shape} and {prompt.shape}"
            )
        guided = sampler.cfg_rate > CFG_THRESHOLD
        rows = 2 * b if guided else b
        x = (noise3 * np.float32(sampler.temperature)).astype(np.float32)
        x[..., :p] = 0
        cond = np.zeros((rows, self.mel_dim, t), np.float32)
        cond[:b, :, :p] = prompt
        mus = np.zeros((rows, c, t), np.float32)
        mus[:b] = mu3
        if guided and not sampler.cfg_drops_text:
            mus[b:] = mu3
        d = 1.0 / sampler.steps
        embed = self._runner(EMBED)
        embed_feeds = {"features": mus}
        if "dt" in embed.input_names:  # v3/v4; v5's DiT has no step embedding
            embed_feeds["dt"] = np.full(rows, d, np.float32)
        emb = embed.run(embed_feeds)
        lengths = np.full(rows, t, np.int64)
        step = self._runner(STEP)
        # accumulated as upstream's v3/v4 do; v5's k / N is the same number for its N
        time = 0.0
        for _ in range(sampler.steps):
            feeds = {
                "x": np.concatenate([x, x]) if guided else x,
                "cond": cond,
                "text": emb["text"],
                "time": np.full(rows, time, np.float32),
                "lengths": lengths,
            }
            if "step" in emb:
                feeds["step"] = emb["step"]
            v = step.run(feeds)["v"]
            v = v[:b] + (v[:b] - v[b:]) * np.float32(sampler.cfg_rate) if guided else v
            x = x + np.float32(d) * v
            time += d
            x[..., :p] = 0
        return x[0] if single else x

    def mel(
        self,
        features: np.ndarray,
        prompt_features: np.ndarray,
        ref_mel: np.ndarray,
        noise: NoiseSource,
        sampler: Sampler,
        noise_offset: int = 0,
    ) -> np.ndarray:
        """Chunked sampling of a target (upstream's sequential mode) → log-mel ``[mel, F]``.

        Args:
            features: the target's content features ``[text_dim, F]``.
            prompt_features: the prompt's content features ``[text_dim, F_ref]``.
            ref_mel: the voice's reference log-mel ``[mel, M]`` (not normalised).
            noise: the start noise; target frame ``i`` uses noise frame ``noise_offset + i``.
            sampler: steps, temperature, guidance.

        Returns:
            Denormalised log-mel ``[mel, F]`` for the vocoder.
        """
        p = self.params
        ref, ref_fea = self._prompt(prompt_features, ref_mel)
        prompt, fea_ref = ref, ref_fea
        t_min = prompt.shape[1]
        chunk_len = p.t_chunk - t_min
        if p.max_target_frames:
            chunk_len = min(chunk_len, p.max_target_frames)
        tail = min(p.tail_frames, t_min)
        outputs = []
        for start in range(0, features.shape[1], chunk_len):
            chunk = features[:, start : start + chunk_len]
            n = chunk.shape[1]
            mu = np.concatenate([fea_ref, chunk], axis=1)
            x0 = np.zeros((self.mel_dim, mu.shape[1]), np.float32)
            x0[:, prompt.shape[1] :] = noise.frames(
                self.mel_dim, noise_offset + start, noise_offset + start + n
            )
            out = self.sample(mu, prompt, x0, sampler)[:, prompt.shape[1] :]
            outputs.append(out)
            if tail:  # v5: the reference, its end replaced by the end of this chunk
                prompt = np.concatenate([ref[:, : t_min - tail], out[:, -tail:]], axis=1)
                fea_ref = np.concatenate([ref_fea[:, : t_min - tail], chunk[:, -tail:]], axis=1)
            else:  # v3/v4: this chunk's output and features
                prompt, fea_ref = out[:, -t_min:], chunk[:, -t_min:]
        if not outputs:
            return np.zeros((self.mel_dim, 0), np.float32)
        return p.denormalize(np.concatenate(outputs, axis=1)).astype(np.float32)

    def _prompt(
        self, prompt_features: np.ndarray, ref_mel: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Normalised prompt mel and prompt features, cut to their common length ≤ ``t_ref``."""
        p = self.params
        prompt = p.normalize(np.asarray(ref_mel, dtype=np.float32))
        t_min = min(prompt.shape[1], prompt_features.shape[1])
        if t_min < 1:
            raise InputError("the voice's reference mel and prompt features must be non-empty")
        prompt, fea_ref = prompt[:, :t_min], prompt_features[:, :t_min]
        if t_min > p.t_ref:
            prompt, fea_ref = prompt[:, -p.t_ref :], fea_ref[:, -p.t_ref :]
        return prompt, fea_ref

    def parallel_mel(
        self,
        features: Sequence[np.ndarray],
        prompt_features: np.ndarray,
        ref_mel: np.ndarray,
        noise: NoiseSource,
        sampler: Sampler,
    ) -> tuple[np.ndarray, int, int]:
        """Upstream's parallel mode (``using_vocoder_synthesis_batched_infer``) up to the mel.

        The segments' features are concatenated, left-padded by :data:`OVERLAP_FRAMES` zero
        frames and cut into windows of ``T_chunk − T_min`` frames that overlap by that much;
        the last is zero-padded. Every window is prompted by the reference (not by the
        previous window) and all run as one batch. Window ``i`` starting at padded frame
        ``s_i`` draws its start noise from ``noise`` frames ``[s_i, s_i + chunk_len)``.

        Returns:
            ``(log-mel [mel, windows · chunk_len], chunk_len, padding of the last window)``.
        """
        prompt, fea_ref = self._prompt(prompt_features, ref_mel)
        t_min = prompt.shape[1]
        chunk_len = self.params.t_chunk - t_min
        if chunk_len <= OVERLAP_FRAMES:
            raise InputError(f"t_chunk − T_min = {chunk_len} must exceed {OVERLAP_FRAMES} frames")
        padded = np.pad(np.concatenate(features, axis=1), ((0, 0), (OVERLAP_FRAMES, 0)))
        chunks, starts, pos, padding = [], [], 0, 0
        while True:
            pos = pos - OVERLAP_FRAMES if pos else pos
            chunk = padded[:, pos : pos + chunk_len]
            if chunk.shape[1] == 0:
                break
            padding = chunk_len - chunk.shape[1]
            chunks.append(np.pad(chunk, ((0, 0), (0, padding))))
            starts.append(pos)
            pos += chunk_len
        b = len(chunks)
        mu = np.concatenate([np.broadcast_to(fea_ref, (b, *fea_ref.shape)), np.stack(chunks)], 2)
        x0 = np.zeros((b, self.mel_dim, t_min + chunk_len), np.float32)
        for i, start in enumerate(starts):
            x0[i, :, t_min:] = noise.frames(self.mel_dim, start, start + chunk_len)
        out = self.sample(np.ascontiguousarray(mu), prompt, x0, sampler)[:, :, t_min:]
        mel = out.transpose(1, 0, 2).reshape(self.mel_dim, -1)  # windows side by side
        return self.params.denormalize(mel).astype(np.float32), chunk_len, padding

    def synthesize_parallel(
        self, jobs: Sequence[VocodeJob], sampler: Sampler | None = None
    ) -> list[np.ndarray]:
        """Upstream's parallel mode for segments of one voice and speed: one CFM batch, one
        vocoder call, windows joined with SOLA, then cut back per segment (the last may come
        out a little shorter, as upstream's). The first job's noise source is used.

        Raises:
            InputError: jobs of different voices or speeds, or a voice without its mel.
        """
        if not jobs:
            return []
        first = jobs[0]
        if any(j.voice is not first.voice or j.speed != first.speed for j in jobs):
            raise InputError("parallel chunking needs segments of one voice and one speed")
        voice, ref_mel = first.voice, self._ref_mel(first.voice)
        ge = voice.ge[:1]
        prompt_fea = self.features([voice.prompt_tokens], [voice.prompt_phones], ge)[0]
        feats = self.features([j.tokens for j in jobs], [j.phones for j in jobs], ge, first.speed)
        mel, chunk_len, padding = self.parallel_mel(
            feats, prompt_fea, ref_mel, first.noise, sampler or self.default_sampler()
        )
        hop = self.params.hop
        audio = self.vocoder(mel)
        step = chunk_len * hop
        audio = sola_join(
            [audio[i : i + step] for i in range(0, audio.size, step)], OVERLAP_FRAMES * hop
        )
        audio = audio[OVERLAP_FRAMES * hop : audio.size - padding * hop]
        out = []
        for f in feats:
            n = f.shape[1] * hop
            out.append(audio[:n])
            audio = audio[n:]
        return out

    def _ref_mel(self, voice: Any) -> np.ndarray:
        ref_mel = getattr(voice, "ref_mel", None)
        if ref_mel is None or np.asarray(ref_mel).ndim != 2:
            raise InputError(
                "a v3/v4 voice needs its reference mel (ref_mel); prepare it with this bundle"
            )
        if voice.prompt_tokens.size == 0 or voice.prompt_phones.size == 0:
            raise InputError("v3/v4 synthesis needs the prompt's tokens and phones (no ref_free)")
        return np.asarray(ref_mel, dtype=np.float32)

    def vocoder(self, mel: np.ndarray) -> np.ndarray:
        """Log-mel ``[mel, F]`` → float32 waveform ``[F · hop]``."""
        mel = np.asarray(mel, dtype=np.float32)
        if mel.ndim != 2 or mel.shape[0] != self.mel_dim or mel.shape[1] < 1:
            raise InputError(f"mel must be [{self.mel_dim}, F ≥ 1], got shape {mel.shape}")
        return self._runner(VOCODER).run({"mel": np.ascontiguousarray(mel[None])})["wav"][0]

    # ------------------------------------------------------------------ engine call

    def default_sampler(self) -> Sampler:
        """The bundle's sampler defaults (upstream v3/v4: 32 steps, temperature 1, no guidance;
        v5 per version) and the step counts and guidance rates the model accepts."""
        p = self.params
        return Sampler(
            p.steps, p.temperature, p.cfg_rate, p.cfg_drops_text, p.allowed_steps, p.max_cfg_rate
        )

    def synthesize(
        self, job: VocodeJob, sampler: Sampler | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One job's ``(waveform, log-mel)``.

        Raises:
            InputError: a voice without a reference mel, or bad tokens/phones.
        """
        voice = job.voice
        ref_mel = self._ref_mel(voice)
        ge = voice.ge[:1]  # upstream's decode_encp reads the main reference only
        prompt_fea, target_fea = (
            self.features([voice.prompt_tokens], [voice.prompt_phones], ge)[0],
            self.features([job.tokens], [job.phones], ge, job.speed)[0],
        )
        offset = int(2 * job.token_offset * self.params.feature_upsample)
        mel = self.mel(
            target_fea, prompt_fea, ref_mel, job.noise, sampler or self.default_sampler(), offset
        )
        if mel.shape[1] == 0:
            return np.zeros(0, np.float32), mel
        return self.vocoder(mel), mel

    def vocode(self, jobs: Sequence[VocodeJob]) -> list[np.ndarray]:
        """The engine's acoustic call (:class:`gsv_runtime.acoustic.AcousticStage`), job by job
        (so a segment's audio never depends on its neighbours); a job's ``sample_steps``
        overrides the bundle's step count and ``parallel`` picks upstream's parallel chunking
        (:meth:`synthesize_parallel` of that one segment, as upstream with batch size 1) where
        the bundle's chunking has one (v5's batched path loops per item upstream, so a v5
        bundle chunks sequentially); a job's ``cfg_rate`` overrides the guidance rate."""
        default = self.default_sampler()
        out = []
        for job in jobs:
            sampler = replace(
                default,
                steps=job.sample_steps or default.steps,
                cfg_rate=default.cfg_rate if job.cfg_rate is None else job.cfg_rate,
            )
            if job.parallel and not self.params.tail_frames:
                out.extend(self.synthesize_parallel([job], sampler))
            else:
                out.append(self.synthesize(job, sampler)[0])
        return out

    def _batch_ge(self, ge: np.ndarray, b: int) -> np.ndarray:
        ge = np.asarray(ge, dtype=np.float32)
        ge = ge[None] if ge.ndim == 2 else ge
        if ge.ndim != 3 or ge.shape[1:] != (self.ge_channels, 1) or ge.shape[0] not in (1, b):
            raise InputError(
                f"ge must be [{self.ge_channels}, 1] or [1|{b}, {self.ge_channels}, 1], "
                f"got shape {ge.shape}"
            )
        return np.ascontiguousarray(np.broadcast_to(ge, (b, *ge.shape[1:])))
