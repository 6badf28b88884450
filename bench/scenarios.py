"""What a benchmark run measures: text sets, configuration points, sweeps and presets."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from gsv_runtime.errors import InputError

ENGINES: Final = ("torch", "onnxruntime", "openvino", "auto")
"""``torch`` is the PyTorch-eager baseline (gsv_models, upstream-equivalent numerics);
``auto`` is the runtime's default, a backend per stage (``gsv info --system``)."""
DEVICES: Final = ("cpu", "gpu")
PRECISIONS: Final = ("fp32", "fp16", "bf16", "int8", "auto")
"""``auto`` runs what the runtime picks per stage on this CPU (``gsv info --system``)."""

SPLIT_BY_LANG: Final = {"en": "cut4", "ko": "cut4", "zh": "cut3", "ja": "cut3", "yue": "cut3"}
"""Sentence split per language (cut4 splits at ".", cut3 at "。"): one GPT row per sentence."""

TEXTS: Final[dict[str, str]] = {
    "en": (
        "The morning train was late again. Everyone on the platform checked their phones. "
        "A small dog watched the pigeons near the stairs. Then the doors opened at last."
    ),
    "zh": ("今天的天气非常好。我们打算下午去公园散步。路边的花都开了。孩子们在草地上放风筝。"),
    "ja": (
        "今日はとてもいい天気です。午後は公園を散歩するつもりです。道ばたの花が咲いています。"
        "子どもたちが凧をあげています。"
    ),
    "ko": (
        "오늘은 날씨가 아주 좋습니다. 오후에는 공원을 산책할 생각입니다. "
        "길가의 꽃이 모두 피었습니다. 아이들이 잔디밭에서 연을 날립니다."
    ),
}
"""Built-in text set: four sentences per language (four GPT rows with the split above)."""


@dataclass(frozen=True)
class TextItem:
    """One request: text in one language and the split that turns it into GPT rows."""

    lang: str
    text: str
    split: str = "cut1"

    @property
    def needs_bert(self) -> bool:
        """Chinese text runs BERT; every other language uses zero features."""
        return self.lang in ("zh", "all_zh")


def builtin_texts(langs: Sequence[str], sentences: int | None = None) -> list[TextItem]:
    """The built-in items of ``langs``, optionally cut to the first ``sentences`` sentences.

    Raises:
        InputError: an unknown language.
    """
    items = []
    for lang in langs:
        if lang not in TEXTS:
            raise InputError(f"no built-in text for {lang!r}; accepted: {', '.join(TEXTS)}")
        text = TEXTS[lang]
        if sentences is not None:
            mark = "." if lang in ("en", "ko") else "。"
            parts = [p for p in text.split(mark) if p.strip()][:sentences]
            text = mark.join(parts) + mark
        items.append(TextItem(lang, text.strip(), SPLIT_BY_LANG[lang]))
    return items


def read_texts(path: str | Path, lang: str = "en", split: str = "cut1") -> list[TextItem]:
    """One request per non-empty line; a line ``zh|text`` names its own language.

    Raises:
        FileNotFoundError: no such file.
        InputError: the file has no text.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such text file (one request per line, 'lang|text')")
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        code, sep, rest = line.partition("|")
        if sep and 1 <= len(code) <= 8 and code.strip().isascii():
            items.append(TextItem(code.strip(), rest.strip(), split))
        else:
            items.append(TextItem(lang, line.strip(), split))
    if not items:
        raise InputError(f"{path}: no text in it")
    return items


@dataclass(frozen=True)
class BenchPoint:
    """One configuration to measure."""

    engine: str
    """``torch`` (baseline), ``onnxruntime`` or ``openvino``."""
    device: str = "cpu"
    """``cpu`` or ``gpu`` (CUDA for torch/onnxruntime, the GPU plugin for OpenVINO)."""
    precision: str = "fp32"
    threads: int = 1
    """Intra-op threads in total; with concurrency C each worker gets threads // C (≥ 1)."""
    batch: int = 1
    """GPT rows decoded together (SynthesisConfig.batch_size: sentences of one request)."""
    concurrency: int = 1
    """Requests in flight, one engine instance per worker thread."""
    sample_steps: int | None = None
    """v3/v4 (CFM) voices: Euler steps of the DiT per chunk (None: the bundle's default)."""

    @property
    def threads_per_worker(self) -> int:
        """Threads each engine instance uses."""
        return max(1, self.threads // self.concurrency)

    @property
    def name(self) -> str:
        """Short readable label, e.g. ``onnxruntime/cpu/fp32 t2 b1 c1``."""
        steps = "" if self.sample_steps is None else f" s{self.sample_steps}"
        return (
            f"{self.engine}/{self.device}/{self.precision} "
            f"t{self.threads} b{self.batch} c{self.concurrency}{steps}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form (also the worker's spec)."""
        return asdict(self)

    def validate(self) -> None:
        """Raise InputError naming the first unsupported field."""
        checks = [
            ("engine", self.engine in ENGINES, f"one of {', '.join(ENGINES)}"),
            ("device", self.device in DEVICES, f"one of {', '.join(DEVICES)}"),
            ("precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
            ("threads", self.threads >= 1, ">= 1"),
            ("batch", self.batch >= 1, ">= 1"),
            ("concurrency", self.concurrency >= 1, ">= 1"),
            ("sample_steps", self.sample_steps is None or self.sample_steps >= 1, ">= 1"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise InputError(f"{name} must be {allowed}, but got {getattr(self, name)!r}")


def supported(point: BenchPoint) -> str | None:
    """Why this combination is not measured (None when it is)."""
    cpu_torch = point.engine == "torch" and point.device == "cpu"
    if cpu_torch and point.precision != "fp32":
        return "the torch baseline runs fp32 on CPU"
    if point.engine == "auto" and point.device != "cpu":
        return "auto ranks the backends on the CPU; name one for the GPU"
    if point.engine == "onnxruntime" and point.precision == "bf16":
        return "onnxruntime has no bf16 graphs (bf16 is an OpenVINO inference hint)"
    return None


@dataclass(frozen=True)
class Sweep:
    """A cartesian product of settings; a preset is a union of sweeps."""

    engines: tuple[str, ...] = ("onnxruntime", "openvino")
    devices: tuple[str, ...] = ("cpu",)
    precisions: tuple[str, ...] = ("fp32",)
    threads: tuple[int, ...] = (2,)
    batches: tuple[int, ...] = (1,)
    concurrency: tuple[int, ...] = (1,)
    sample_steps: tuple[int | None, ...] = (None,)
    """CFM voices' DiT steps (None: the bundle's default); ignored by v1/v2 voices."""

    def points(self) -> list[BenchPoint]:
        """Every supported combination, in a stable order."""
        out: list[BenchPoint] = []
        for combo in itertools.product(
            self.devices,
            self.batches,
            self.concurrency,
            self.threads,
            self.sample_steps,
            self.precisions,
            self.engines,
        ):
            device, batch, conc, threads, steps, precision, engine = combo
            if engine == "torch" and precision == "auto":
                precision = "fp32"  # what the baseline runs; one point with an fp32 sweep
            point = BenchPoint(engine, device, precision, threads, batch, conc, steps)
            point.validate()
            if supported(point) is None and point not in out:
                out.append(point)
        return out


def expand(sweeps: Iterable[Sweep]) -> list[BenchPoint]:
    """The union of the sweeps' points, first occurrence first."""
    return list(dict.fromkeys(p for s in sweeps for p in s.points()))


@dataclass(frozen=True)
class Settings:
    """How each point is measured."""

    warmup: int = 1
    """Untimed rounds per engine before measuring, each one request per language (first-call
    allocations, lazy imports, G2P dictionaries, BERT)."""
    repeats: int = 3
    """Timed passes over the whole text set; the medians and spread are over these."""
    fixed_length: int | None = None
    """Tokens per GPT row with EOS masked (random weights never stop reliably); None = EOS."""
    seed: int = 0
    measure_reference: bool = True
    """Also time one voice preparation (HuBERT, SV, reference encoder) when a support bundle
    and a reference clip are available."""
    isolate: bool = True
    """Each point in a fresh worker process: cold loads and peak RSS are its own."""
    texts: tuple[TextItem, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """JSON form recorded with every result (texts as languages and lengths)."""
        d = asdict(self)
        d["texts"] = [{"lang": t.lang, "chars": len(t.text), "split": t.split} for t in self.texts]
        return d


@dataclass(frozen=True)
class Preset:
    """A named benchmark: its sweeps, settings and text languages."""

    sweeps: tuple[Sweep, ...]
    settings: Settings
    langs: tuple[str, ...]
    sentences: int | None = None
    description: str = ""


def _full_cpu_sweeps() -> tuple[Sweep, ...]:
    rt = ("onnxruntime", "openvino")
    return (
        # backends against the torch baseline at every thread count
        Sweep(engines=("torch", *rt), threads=(1, 2)),
        # reduced precisions (AMX/AVX-512 bf16 and int8 on OpenVINO, int8/fp16 on ORT)
        Sweep(engines=rt, precisions=("fp16", "bf16", "int8"), threads=(2,)),
        # batching: four sentences decoded together
        Sweep(engines=("torch", *rt), threads=(2,), batches=(4,)),
        # two requests in flight, one thread each
        Sweep(engines=rt, threads=(2,), concurrency=(2,)),
    )


PRESETS: Final[dict[str, Preset]] = {
    "quick": Preset(
        # the baseline last: in one process its leftovers would inflate the others' RSS
        sweeps=(Sweep(engines=("onnxruntime", "openvino", "torch"), threads=(0,)),),
        settings=Settings(warmup=1, repeats=3, fixed_length=32, measure_reference=False),
        langs=("en",),
        sentences=2,
        description="English, 2 sentences × 32 tokens, fp32, all cores, batch 1; "
        "torch baseline, onnxruntime, OpenVINO; saved voice (no HuBERT/BERT at run time)",
    ),
    "standard": Preset(
        sweeps=_full_cpu_sweeps(),
        settings=Settings(warmup=1, repeats=3, fixed_length=50),
        langs=("en", "zh"),
        sentences=2,
        description="English + Chinese (BERT), 2 sentences each × 50 tokens; threads 1/2, "
        "fp32/fp16/bf16/int8, batch 1/4, concurrency 1/2; voice preparation timed once",
    ),
    "gpu": Preset(
        sweeps=(
            Sweep(engines=("torch", "onnxruntime"), devices=("cpu", "gpu"), threads=(0,)),
            Sweep(engines=("onnxruntime",), devices=("gpu",), precisions=("fp16",), threads=(0,)),
            Sweep(
                engines=("torch", "onnxruntime"),
                devices=("gpu",),
                threads=(0,),
                batches=(4,),
                concurrency=(1, 4),
            ),
        ),
        settings=Settings(warmup=2, repeats=5, fixed_length=50),
        langs=("en", "zh"),
        description="CPU vs CUDA: torch and onnxruntime fp32/fp16, batch 1/4, concurrency 1/4",
    ),
}
"""``threads=0`` in a sweep means every logical core of the machine running it."""


def resolve_threads(sweeps: Sequence[Sweep], cores: int) -> tuple[Sweep, ...]:
    """Replace the ``0`` thread count (all cores) with ``cores``."""
    return tuple(
        replace(s, threads=tuple(dict.fromkeys(cores if t == 0 else t for t in s.threads)))
        for s in sweeps
    )
