"""Support models at run time: HuBERT content features, BERT text features, speaker vector.

Torch-free: numpy, a backend runner per graph, and the ``tokenizers`` package for BERT. The
graphs come from a support bundle written by ``gsv_export.support`` (see there for their I/O).

Pipeline duties of the caller, as upstream does them (``TTS_infer_pack/TTS.py``):

* HuBERT: the reference is loaded at 16 kHz (3–10 s) and **0.6 s of zeros (9,600 samples,
  :data:`HUBERT_PAD_SAMPLES`) are appended** before :meth:`SupportModels.hubert_features`; the
  result goes to the voice's ssl_proj + quantizer for the prompt tokens.
* BERT: only Chinese segments get features (:meth:`SupportModels.bert_features` on the
  normalised text and its word2ph); other languages use zeros ``[n_phones, 1024]``.
* SV: the peak-normalised 32 kHz reference goes to :meth:`SupportModels.speaker_vector`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from gsv_runtime.audio_features import sv_fbank
from gsv_runtime.backends import (
    BackendName,
    GraphRunner,
    RunnerOptions,
    available_backends,
    make_runner,
)
from gsv_runtime.bundle import Bundle, check_graph_io, inside
from gsv_runtime.errors import BundleError, InputError
from gsv_runtime.variants import (
    bundle_formats,
    choose_backend,
    choose_support_precisions,
    variant_options,
)

HUBERT_PAD_SAMPLES: Final = 9600
"""Zeros upstream appends to the 16 kHz reference before HuBERT (0.3 s × 32 kHz, see
``TTS.py::_set_prompt_semantic``); the caller appends them."""
HUBERT_MIN_SAMPLES: Final = 400
"""Shortest input of the conv front-end (one 25 ms receptive field)."""
TOKENIZER_PATH: Final = "tokenizer/tokenizer.json"
BERT_MAX_CHARS: Final = 510
"""512 positions minus [CLS] and [SEP] (upstream splits longer texts before BERT)."""


class SupportModels:
    """The support graphs of one bundle, compiled on first use, plus the BERT tokenizer.

    Not thread-safe (an OpenVINO runner holds one infer request): use one instance per worker.

    Args:
        bundle: A support bundle (graphs ``hubert``, ``bert``, ``sv``; any subset).
        backend: "onnxruntime" or "openvino".
        options: Device and threads for every graph (None: backend defaults).
        precision: A precision request as the runtime takes it (``auto``, ``int8``,
            ``gpt=int8,support=bf16``; resolved per graph by
            :func:`~gsv_runtime.variants.choose_support_precisions`: a graph without the
            variant runs fp32), or a mapping graph → precision, where a missing variant is an
            error. OpenVINO's ``bf16`` is the fp32 IR compiled with a bf16 precision hint.
    """

    def __init__(
        self,
        bundle: Bundle,
        backend: BackendName = "onnxruntime",
        options: RunnerOptions | None = None,
        precision: str | Mapping[str, str] = "fp32",
    ) -> None:
        self.bundle = bundle
        self.backend: BackendName = backend
        self.options = options or RunnerOptions()
        self.precisions: dict[str, str] = (
            choose_support_precisions(bundle, backend, precision, self.options.device)
            if isinstance(precision, str)
            else dict(precision)
        )
        """The variant each graph runs."""
        self._runners: dict[str, GraphRunner] = {}
        self._tokenizer: Any = None

    @classmethod
    def load(
        cls,
        root: str | Path,
        backend: str = "onnxruntime",
        options: RunnerOptions | None = None,
        precision: str | Mapping[str, str] = "fp32",
    ) -> SupportModels:
        """Open the support bundle at ``root`` (see the class arguments; ``backend`` may also be
        ``auto``: see :func:`~gsv_runtime.variants.choose_backend`).

        Raises:
            BundleError: missing, altered, not a bundle, or not a support bundle.
            BackendError: the backend is not installed or the bundle has no graphs for it.
        """
        bundle = Bundle.load(root)
        if bundle.manifest.kind != "support":
            raise BundleError(f"{root}: a {bundle.manifest.kind} bundle is not a support bundle")
        device = options.device if options is not None else "cpu"
        chosen = choose_backend(
            "support", backend, bundle_formats(bundle), available_backends(), device
        )
        return cls(bundle, chosen, options, precision)  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------ plumbing

    def runner(self, name: str) -> GraphRunner:
        """The compiled graph ``name`` (compiled once, checked against the manifest).

        Raises:
            BundleError: the bundle has no such graph or variant, or its I/O names differ.
            BackendError: the backend cannot compile it.
        """
        if name not in self._runners:
            spec = self.bundle.graph(name)
            precision = self.precisions.get(name, "fp32")
            path = self.bundle.graph_path(name, self.backend, precision)
            options = variant_options(self.backend, precision, self.options, "support")
            runner = make_runner(path, self.backend, options)
            check_graph_io(path.name, spec, runner.input_names, runner.output_names)
            self._runners[name] = runner
        return self._runners[name]

    def _dim(self, graph: str, output: str, axis: int) -> int:
        dim = self.bundle.graph(graph).outputs[output].shape[axis]
        if not isinstance(dim, int):
            raise BundleError(f"{self.bundle.root}: {graph}.{output} has no fixed size")
        return dim

    @property
    def ssl_dim(self) -> int:
        """HuBERT feature width (768)."""
        return self._dim("hubert", "features", 1)

    @property
    def bert_dim(self) -> int:
        """BERT feature width (1024)."""
        return self._dim("bert", "hidden", 2)

    @property
    def sv_dim(self) -> int:
        """Speaker vector length (20480)."""
        return self._dim("sv", "sv", 1)

    @property
    def tokenizer_path(self) -> Path:
        """The bundled BERT ``tokenizer.json`` (also what g2pW tokenises with)."""
        rel = self.bundle.manifest.text.get("tokenizer", TOKENIZER_PATH)
        try:
            return inside(self.bundle.root, rel, "tokenizer")
        except BundleError as exc:
            raise BundleError(f"no BERT tokenizer: {exc}") from None

    @property
    def tokenizer(self) -> Any:
        """The bundled BERT ``tokenizers.Tokenizer`` (loaded once)."""
        if self._tokenizer is None:
            path = self.tokenizer_path
            try:
                from tokenizers import Tokenizer
            except ImportError as exc:
                raise BundleError(
                    "BERT features need the 'tokenizers' package (pip install tokenizers)"
                ) from exc
            try:
                self._tokenizer = Tokenizer.from_file(str(path))
            except Exception as exc:  # tokenizers raises a bare Exception on a bad file
                raise BundleError(f"{path}: not a tokenizers JSON file ({exc})") from None
        return self._tokenizer

    # ------------------------------------------------------------------------------ features

    def hubert_features(self, wav16k: np.ndarray) -> np.ndarray:
        """Content features of a 16 kHz waveform, as upstream's ``HubertModel`` call.

        Args:
            wav16k: Float waveform [N] in [-1, 1], not normalised; upstream appends
                :data:`HUBERT_PAD_SAMPLES` zeros to the reference first (the caller's job).

        Returns:
            float32 [1, 768, T] with T = (N − 400) // 320 + 1 (50 frames per second).

        Raises:
            InputError: not a 1-D float array, or fewer than 400 samples.
        """
        wav = np.asarray(wav16k)
        if wav.ndim != 1 or not np.issubdtype(wav.dtype, np.floating):
            raise InputError(f"wav16k must be a 1-D float array, got {wav.dtype} {wav.shape}")
        if wav.shape[0] < HUBERT_MIN_SAMPLES:
            raise InputError(
                f"wav16k needs at least {HUBERT_MIN_SAMPLES} samples, got {wav.shape[0]}"
            )
        out = self.runner("hubert").run({"wav16k": wav.astype(np.float32)[None]})
        return out["features"]

    def bert_token_ids(self, text: str) -> np.ndarray:
        """[CLS] + one token id per character + [SEP], as int64 [len(text) + 2].

        Raises:
            InputError: the text is too long, or does not tokenize one token per character
                (upstream relies on that too; normalised Chinese text always does).
        """
        if len(text) > BERT_MAX_CHARS:
            raise InputError(
                f"BERT text must have at most {BERT_MAX_CHARS} characters, got {len(text)}"
            )
        enc = self.tokenizer.encode(text)
        chars = [(i, i + 1) for i in range(len(text))]
        if len(enc.ids) != len(text) + 2 or list(enc.offsets[1:-1]) != chars:
            raise InputError(
                f"BERT text must tokenize to one token per character; {text!r} gives "
                f"{enc.tokens[1:-1]}"
            )
        return np.asarray(enc.ids, dtype=np.int64)

    def bert_features(self, text: str, word2ph: Sequence[int]) -> np.ndarray:
        """Phone-level BERT features, as upstream's ``get_bert_feature`` (transposed).

        Char-level tokens through the ``bert`` graph (``hidden_states[-3]``), [CLS]/[SEP]
        dropped, each character's vector repeated ``word2ph[i]`` times.

        Args:
            text: The normalised Chinese text (``norm_text`` of the frontend).
            word2ph: Phones per character; ``len(word2ph) == len(text)``.

        Returns:
            float32 [sum(word2ph), 1024] (upstream returns the transpose, [1024, n_phones]).

        Raises:
            InputError: length mismatch, negative counts, or text the tokenizer splits
                differently from its characters.
        """
        counts = np.asarray(word2ph, dtype=np.int64)
        if counts.ndim != 1 or counts.shape[0] != len(text):
            raise InputError(
                f"word2ph must have one entry per character: {len(text)} characters, "
                f"{counts.size} entries"
            )
        if (counts < 0).any():
            raise InputError("word2ph entries must be ≥ 0")
        ids = self.bert_token_ids(text)[None]  # (1, T + 2)
        out = self.runner("bert").run(
            {
                "input_ids": ids,
                "attention_mask": np.ones_like(ids),
                "token_type_ids": np.zeros_like(ids),
            }
        )
        per_char = out["hidden"][0, 1:-1]  # (T, 1024)
        return np.repeat(per_char, counts, axis=0)

    def speaker_vector(self, wav32k: np.ndarray) -> np.ndarray:
        """ERes2NetV2 speaker vector of the (peak-normalised) 32 kHz reference.

        ``sv_fbank`` (resample to 16 kHz, Kaldi fbank) → ``sv`` graph, as upstream ``sv.py``.

        Returns:
            float32 [sv_dim] (20480 for the pretrained model).

        Raises:
            InputError: bad shape or too short for one fbank frame.
        """
        wav = np.asarray(wav32k)
        if wav.ndim != 1:
            raise InputError(f"wav32k must be 1-D, got shape {wav.shape}")
        fbank = sv_fbank(wav)  # (T, 80)
        return self.runner("sv").run({"fbank": fbank[None].astype(np.float32)})["sv"][0]
