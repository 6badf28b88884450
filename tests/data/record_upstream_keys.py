"""Record upstream's checkpoint key/shape lists per version into upstream_keys.json.

Run with GSV_UPSTREAM_DIR pointing at a GPT-SoVITS checkout:
    GSV_UPSTREAM_DIR=... python tests/data/record_upstream_keys.py
It instantiates upstream's own classes with the shipped configs (s1longer*.yaml, s2*.json) and
lists the keys a checkpoint carries: the GPT under the Lightning ``model.`` prefix, SoVITS with
weight-norm pairs and without the training-only ``enc_q.*``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

ROOT = Path(os.environ["GSV_UPSTREAM_DIR"])
PKG = ROOT / "GPT_SoVITS"
sys.path[:0] = [str(PKG), str(ROOT)]

from AR.models.t2s_model import Text2SemanticDecoder  # noqa: E402
from module.models import SynthesizerTrn  # noqa: E402


def gpt_keys(yaml_name: str) -> dict[str, list[int]]:
    config = yaml.safe_load((PKG / "configs" / yaml_name).read_text())
    model = Text2SemanticDecoder(config=config, top_k=3)
    return {f"model.{k}": list(v.shape) for k, v in model.state_dict().items()}


def sovits_keys(json_name: str, version: str) -> dict[str, list[int]]:
    hps = json.loads((PKG / "configs" / json_name).read_text())
    kwargs = dict(hps["model"], version=version, semantic_frame_rate="25hz")
    model = SynthesizerTrn(
        hps["data"]["filter_length"] // 2 + 1,
        hps["train"]["segment_size"] // hps["data"]["hop_length"],
        n_speakers=hps["data"]["n_speakers"],
        **kwargs,
    )
    return {k: list(v.shape) for k, v in model.state_dict().items() if not k.startswith("enc_q.")}


def main() -> None:
    # v1 GPTs were trained with s1longer.yaml; its phoneme_vocab_size is 512
    v1_yaml = yaml.safe_load((PKG / "configs" / "s1longer.yaml").read_text())
    assert v1_yaml["model"]["phoneme_vocab_size"] == 512
    record = {
        "gpt_v1": gpt_keys("s1longer.yaml"),
        "gpt_v2": gpt_keys("s1longer-v2.yaml"),
        "sovits_v1": sovits_keys("s2.json", "v1"),
        "sovits_v2": sovits_keys("s2.json", "v2"),
        "sovits_v2Pro": sovits_keys("s2v2Pro.json", "v2Pro"),
        "sovits_v2ProPlus": sovits_keys("s2v2ProPlus.json", "v2ProPlus"),
    }
    out = Path(__file__).with_name("upstream_keys.json")
    out.write_text(json.dumps(record, indent=0, sort_keys=True) + "\n")
    print(f"wrote {out}: " + ", ".join(f"{k} {len(v)}" for k, v in record.items()))


if __name__ == "__main__":
    main()
