"""nn.Module adapters that make the GPT (T2S) traceable: one adapter per exported graph.

The reference model (``gsv_models.t2s``) stays untouched; these adapters call its pieces
(``embed_text``, ``embed_audio``, ``T2SLayer.qkv/attend/finish``, ``predict``) and only replace
what does not trace well: Python-int shape arithmetic (``pack_prefix``/``prefix_mask`` use
``arange(size)`` and ``clamp(max=size − 1)``, which a tracer bakes in), the in-place cache
writes, and the attention kernel of the GQA and OpenVINO graphs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gsv_models.config import T2SConfig
from gsv_models.t2s import T2SModel


def dummy_prefix(cfg: T2SConfig, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Tracing inputs: ``batch`` rows with different phone and prompt lengths."""
    g = torch.Generator().manual_seed(seed)
    sx, sy = 6, 4
    phones = torch.randint(0, cfg.phoneme_vocab_size, (batch, sx), generator=g)
    phone_lens = torch.tensor([sx - (i % 3) for i in range(batch)])
    bert = torch.randn(batch, sx, cfg.bert_dim, generator=g)
    prompt = torch.randint(0, cfg.eos, (batch, sy), generator=g)
    prompt_lens = torch.tensor([sy - ((i + 1) % 2) for i in range(batch)])
    return phones, phone_lens, bert, prompt, prompt_lens


def _slot_index(phones: Tensor, prompt: Tensor) -> Tensor:
    """[B, Sx + Sy] int64 0, 1, 2, … built from shapes only (traces with dynamic lengths)."""
    both = torch.cat([phones, prompt], dim=1)  # (B, S)
    return torch.ones_like(both).cumsum(dim=1) - 1


def embed_prefix(
    model: T2SModel,
    phones: Tensor,
    phone_lens: Tensor,
    bert: Tensor,
    prompt: Tensor,
    prompt_lens: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Traceable ``pack_prefix`` + ``prefix_mask`` (same values; see ``gsv_models.t2s``).

    Args:
        model: the reference model.
        phones: [B, Sx] int64; bert [B, Sx, 1024]; prompt [B, Sy] int64 with Sy >= 1
            (a ref-free row passes a dummy column and ``prompt_lens`` 0).
        phone_lens: [B] int64 (>= 1).
        bert: [B, Sx, 1024].
        prompt: [B, Sy].
        prompt_lens: [B] int64.

    Returns:
        (embeddings [B, S, D] right-padded with zeros, additive mask [B, 1, S, S],
        lens [B] = phone_lens + prompt_lens).
    """
    text = model.embed_text(phones, bert)  # (B, Sx, D)
    audio_pos = torch.ones_like(prompt).cumsum(dim=1) - 1  # (B, Sy)
    audio = model.embed_audio(prompt, audio_pos)  # (B, Sy, D)
    slot = _slot_index(phones, prompt)  # (B, S)
    tl = phone_lens.view(-1, 1)
    al = prompt_lens.view(-1, 1)
    lens = tl + al  # (B, 1)
    d = text.shape[2]
    # indices stay inside each tensor for every slot; pads are zeroed afterwards
    ti = torch.minimum(slot, tl - 1)
    ai = torch.minimum((slot - tl).clamp(min=0), (al - 1).clamp(min=0))
    t = torch.gather(text, 1, ti.unsqueeze(-1).expand(-1, -1, d))  # (B, S, D)
    a = torch.gather(audio, 1, ai.unsqueeze(-1).expand(-1, -1, d))  # (B, S, D)
    real = (slot < lens).unsqueeze(-1)  # (B, S, 1)
    h = torch.where((slot < tl).unsqueeze(-1), t, a) * real.to(t.dtype)
    # mask: key k of row b is visible to query j when it is real and is text or k <= j
    j = slot[:1].unsqueeze(2)  # (1, S, 1) query slot
    k = slot.unsqueeze(1)  # (B, 1, S) key slot
    visible = (k < lens.view(-1, 1, 1)) & ((k < tl.view(-1, 1, 1)) | (k <= j))  # (B, S, S)
    mask = torch.zeros_like(visible, dtype=h.dtype).masked_fill(~visible, float("-inf"))
    return h, mask.unsqueeze(1), lens.view(-1)


def _last_rows(h: Tensor, index: Tensor) -> Tensor:
    """h [B, S, D], index [B] → h[b, index[b]] as [B, D] (Gather on axis 1, no Squeeze)."""
    picked = torch.gather(h, 1, index.view(-1, 1, 1).expand(-1, 1, h.shape[2]))  # (B, 1, D)
    return picked[:, 0]


class PrefillGraph(nn.Module):
    """``t2s_prefill``: the whole right-padded prefix → last-position logits and per-layer K/V."""

    def __init__(self, model: T2SModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        phones: Tensor,
        phone_lens: Tensor,
        bert: Tensor,
        prompt: Tensor,
        prompt_lens: Tensor,
    ) -> tuple[Tensor, ...]:
        """Returns (logits [B, V], k0, v0, k1, v1, …) with K/V [B, nh, S, hs]."""
        h, mask, lens = embed_prefix(self.model, phones, phone_lens, bert, prompt, prompt_lens)
        kv: list[Tensor] = []
        for layer in self.model.layers:
            h, k, v = layer(h, mask)
            kv += [k, v]
        return (self.model.predict(_last_rows(h, lens - 1)), *kv)


class StepGraph(nn.Module):
    """``t2s_step``: one token per row, explicit past → present (concat), additive mask."""

    def __init__(self, model: T2SModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, positions: Tensor, mask: Tensor, *past: Tensor) -> Any:
        """tokens [B, 1], positions [B], mask [B, 1, 1, T+1], past K/V [B, nh, T, hs]."""
        h = self.model.embed_audio(tokens, positions.view(-1, 1))  # (B, 1, D)
        present: list[Tensor] = []
        for i, layer in enumerate(self.model.layers):
            q, k, v = layer.qkv(h)  # (B, nh, 1, hs)
            k = torch.cat([past[2 * i], k], dim=2)  # (B, nh, T+1, hs)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            h = layer.finish(h, layer.attend(q, k, v, mask))
            present += [k, v]
        return (self.model.predict(h[:, 0]), *present)


class GroupQueryAttention(torch.autograd.Function):
    """Exports as ``com.microsoft::GroupQueryAttention`` on packed QKV with a shared cache.

    The eager forward has the op's semantics for one new token per row (so the adapter can be
    checked in torch): write row b's new K/V at slot ``seqlens_k[b]`` of the [B, nh, Tmax, hs]
    buffers and attend over slots ``0..seqlens_k[b]``. With ``kv_half`` the caches are float16
    and the op runs in float16 between two Casts (the form ORT-CUDA's kernel needs).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        qkv: Tensor,
        past_k: Tensor,
        past_v: Tensor,
        seqlens_k: Tensor,
        total: Tensor,
        n_head: int,
        scale: float,
        kv_half: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        b, _, d3 = qkv.shape
        hs = d3 // 3 // n_head
        if kv_half:
            qkv = qkv.half().float()
        q, k, v = qkv.view(b, 3, n_head, hs).unbind(1)  # each (B, nh, hs)
        slot = seqlens_k.long().view(-1, 1, 1, 1).expand(-1, n_head, 1, hs)
        pk = past_k.scatter(2, slot, k.unsqueeze(2).to(past_k.dtype))  # (B, nh, Tmax, hs)
        pv = past_v.scatter(2, slot, v.unsqueeze(2).to(past_v.dtype))
        tmax = pk.shape[2]
        visible = torch.arange(tmax).view(1, tmax) <= seqlens_k.long().view(-1, 1)  # (B, Tmax)
        scores = (q.unsqueeze(2) * scale) @ pk.float().transpose(-2, -1)  # (B, nh, 1, Tmax)
        scores = scores.masked_fill(~visible.view(b, 1, 1, tmax), float("-inf"))
        out = torch.softmax(scores, dim=-1) @ pv.float()  # (B, nh, 1, hs)
        if kv_half:
            out = out.half().float()
        return out.transpose(1, 2).reshape(b, 1, n_head * hs), pk, pv

    @staticmethod
    def symbolic(
        g: Any,
        qkv: Any,
        past_k: Any,
        past_v: Any,
        seqlens_k: Any,
        total: Any,
        n_head: int,
        scale: float,
        kv_half: bool,
    ) -> Any:
        """The key/value inputs are left out here and inserted as "" by :func:`fix_gqa_nodes`."""
        from torch.onnx import TensorProtoDataType

        if kv_half:
            qkv = g.op("Cast", qkv, to_i=TensorProtoDataType.FLOAT16)
        out, pk, pv = g.op(
            "com.microsoft::GroupQueryAttention",
            qkv,
            past_k,
            past_v,
            seqlens_k,
            total,
            num_heads_i=n_head,
            kv_num_heads_i=n_head,
            scale_f=scale,
            outputs=3,
        )
        if kv_half:
            out = g.op("Cast", out, to_i=TensorProtoDataType.FLOAT)
        return out, pk, pv


def fix_gqa_nodes(model: Any) -> int:
    """Give every traced GroupQueryAttention node its real input list (empty key and value).

    Returns:
        The number of nodes fixed.
    """
    fixed = 0
    for node in model.graph.node:
        if node.op_type == "GroupQueryAttention" and len(node.input) == 5:
            qkv, *rest = list(node.input)
            del node.input[:]
            node.input.extend([qkv, "", "", *rest])
            fixed += 1
    return fixed


class GqaStepGraph(nn.Module):
    """``t2s_step_gqa``: one token per row into a preallocated cache shared in place."""

    def __init__(self, model: T2SModel, kv_half: bool = False) -> None:
        super().__init__()
        self.model = model
        self.kv_half = kv_half

    def forward(
        self, tokens: Tensor, positions: Tensor, seqlens_k: Tensor, total: Tensor, *past: Tensor
    ) -> Any:
        """tokens [B, 1], positions [B], seqlens_k [B] i32, total [] i32, past [B, nh, Tmax, hs]."""
        h = self.model.embed_audio(tokens, positions.view(-1, 1))  # (B, 1, D)
        present: list[Tensor] = []
        for i, layer in enumerate(self.model.layers):
            attn = layer.self_attn
            qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)  # (B, 1, 3D)
            out, k, v = GroupQueryAttention.apply(
                qkv,
                past[2 * i],
                past[2 * i + 1],
                seqlens_k,
                total,
                layer.n_head,
                layer.scale,
                self.kv_half,
            )
            h = layer.finish(h, out)
            present += [k, v]
        return (self.model.predict(h[:, 0]), *present)


class PrefixEmbedGraph(nn.Module):
    """``t2s_prefix_embed`` (OpenVINO path): the packed prefix and its mask, no layers."""

    def __init__(self, model: T2SModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        phones: Tensor,
        phone_lens: Tensor,
        bert: Tensor,
        prompt: Tensor,
        prompt_lens: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Returns (embeds [B, S, D], mask [B, 1, S, S])."""
        h, mask, _ = embed_prefix(self.model, phones, phone_lens, bert, prompt, prompt_lens)
        return h, mask


class TokenEmbedGraph(nn.Module):
    """``t2s_token_embed`` (OpenVINO path): one token per row at its audio position."""

    def __init__(self, model: T2SModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """tokens [B, 1], positions [B] → [B, 1, D]."""
        return self.model.embed_audio(tokens, positions.view(-1, 1))


class DecoderGraph(nn.Module):
    """``t2s_decoder`` before it is made stateful: embeddings + past → logits at ``last``.

    Attention goes through ``F.scaled_dot_product_attention`` so that OpenVINO's converter
    keeps a ScaledDotProductAttention op, which the CPU plugin fuses with the stateful cache.
    The same graph serves the prefill (past empty, S = prefix) and the steps (S = 1).
    """

    def __init__(self, model: T2SModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, embeds: Tensor, mask: Tensor, last: Tensor, *past: Tensor) -> Any:
        """embeds [B, S, D], mask [B, 1, S, T+S], last [B], past [B, nh, T, hs]."""
        h = embeds
        b, s, d = embeds.shape
        present: list[Tensor] = []
        for i, layer in enumerate(self.model.layers):
            q, k, v = layer.qkv(h)  # (B, nh, S, hs)
            k = torch.cat([past[2 * i], k], dim=2)  # (B, nh, T+S, hs)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=layer.scale)
            h = layer.finish(h, out.transpose(1, 2).reshape(b, s, d))  # (B, S, D)
            present += [k, v]
        return (self.model.predict(_last_rows(h, last)), *present)
