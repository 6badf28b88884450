"""GPT (T2S) decoder of GPT-SoVITS: explicit prefill, one-token step, preallocated KV cache.

Mirrors ``Text2SemanticDecoder`` of ``GPT_SoVITS/AR/models/t2s_model.py`` (inference only): its
``state_dict()`` has exactly upstream's parameter keys, so a GPT ``.ckpt``'s ``weight`` dict loads
with ``strict=True`` once the leading ``model.`` is stripped.

Conventions of the batched reference methods (the exported graphs use the same ones):

* **Right padding.** Row i of a prefix is ``[phones_i (Lx_i), prompt_i (P_i), pad...]``: cache slot
  j of row i holds text position j for j < Lx_i and audio position j − Lx_i for
  Lx_i <= j < Lx_i + P_i. Decode step t (t = 0 is the token sampled from the prefill logits)
  feeds that token at audio position ``P_i + t`` and writes its K/V to slot ``Lx_i + P_i + t``.
  Rows therefore stay contiguous from slot 0 (what a ``seqlens_k`` style kernel wants).
* **Masks** are additive float tensors (0 = visible, −inf = blocked), [B, 1, Tq, Tk]. In the
  prefix, a text query sees every text key of its row; an audio query sees every text key and
  the audio keys up to itself; keys at or beyond the row's length are blocked. Padded queries see
  all real keys (their outputs are never read; this keeps softmax finite). In a step, a row sees
  the slots ``<= its own write slot``; stale prefill rows beyond it stay blocked.
* **Positions** of the two sinusoidal tables both start at 0 (text and audio count separately).
* **Logits** come from the last real position of each row, [B, vocab_size]; EOS is the last id.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gsv_models.config import T2SConfig
from gsv_models.sampling import decode_step
from gsv_runtime.gpt.sampling import MAX_STEPS, MIN_STEPS_BEFORE_EOS, SamplingParams

"""Width of the phone-level BERT features (``bert_proj`` input)."""
LN_EPS: Final = 1e-5
DEFAULT_MAX_POSITIONS: Final = 4000
"""Rows of the sinusoidal tables; upstream precomputes the same number."""

NoiseFn = Callable[[int, tuple[int, int]], Tensor]
"""``noise_fn(step, (rows, columns))`` → Exp(1) noise for that step's sampler."""


def sinusoid_table(n_positions: int, dim: int) -> Tensor:
    """Interleaved sinusoidal table [n_positions, dim]: even channels sin, odd channels cos.

    Channel pair i has angular frequency ``10000 ** (-2i / dim)``; computed in float32 the way
    upstream's ``SinePositionalEmbedding`` (``AR/modules/embedding.py``) builds its table.
    """
    position = torch.arange(n_positions, dtype=torch.float32).unsqueeze(1)  # (N, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    table = torch.zeros(n_positions, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)
    return table


def additive_mask(visible: Tensor, dtype: torch.dtype) -> Tensor:
    """bool → float mask: 0 where visible, −inf elsewhere."""
    zeros = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return zeros.masked_fill(~visible, float("-inf"))


def prefix_mask(text_lens: Tensor, lens: Tensor, size: int, dtype: torch.dtype) -> Tensor:
    """Attention mask of a right-padded prefix, [B, 1, size, size].

    Args:
        text_lens: [B] phones per row (Lx_i).
        lens: [B] Lx_i + P_i.
        size: padded prefix length S.
        dtype: float dtype of the mask.
    """
    j = torch.arange(size, device=lens.device).view(1, size, 1)  # query slot
    k = torch.arange(size, device=lens.device).view(1, 1, size)  # key slot
    real_key = k < lens.view(-1, 1, 1)
    visible = real_key & ((k < text_lens.view(-1, 1, 1)) | (k <= j))  # (B, S, S)
    return additive_mask(visible.unsqueeze(1), dtype)


def step_mask(slots: Tensor, kv_len: int, dtype: torch.dtype) -> Tensor:
    """Mask of one decode step, [B, 1, 1, kv_len]: row i sees slots 0..slots[i]."""
    k = torch.arange(kv_len, device=slots.device).view(1, kv_len)
    return additive_mask((k <= slots.view(-1, 1)).view(-1, 1, 1, kv_len), dtype)


def pack_prefix(text: Tensor, text_lens: Tensor, audio: Tensor, audio_lens: Tensor) -> Tensor:
    """Join per-row text and audio embeddings into one right-padded sequence.

    Args:
        text: [B, Sx, D], real rows ``[:text_lens[i]]``.
        text_lens: [B].
        audio: [B, Sy, D], real rows ``[:audio_lens[i]]``.
        audio_lens: [B].

    Returns:
        [B, Sx + Sy, D]: ``text_i[:Lx_i]`` then ``audio_i[:P_i]``, then zeros.
    """
    b, sx, d = text.shape
    sy = audio.shape[1]
    if sy == 0:
        return text
    j = torch.arange(sx + sy, device=text.device).view(1, -1)  # (1, S)
    tl = text_lens.view(-1, 1)
    from_text = (j < tl).unsqueeze(-1)  # (B, S, 1)
    real = (j < tl + audio_lens.view(-1, 1)).unsqueeze(-1)
    ti = j.clamp(max=sx - 1).expand(b, -1)  # (B, S)
    ai = (j - tl).clamp(0, sy - 1)  # (B, S)
    t = torch.gather(text, 1, ti.unsqueeze(-1).expand(-1, -1, d))
    a = torch.gather(audio, 1, ai.unsqueeze(-1).expand(-1, -1, d))
    return torch.where(from_text, t, a) * real.to(text.dtype)


@dataclass
class KVCache:
    """Preallocated per-layer K/V buffers, each [B, n_head, max_len, head_dim] (BNSH)."""

    keys: list[Tensor]
    values: list[Tensor]

    @classmethod
    def empty(
        cls,
        config: T2SConfig,
        batch: int,
        max_len: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """Zero buffers for ``batch`` rows of up to ``max_len`` slots."""
        shape = (batch, config.n_head, max_len, config.hidden_dim // config.n_head)
        return cls(
            [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)],
            [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)],
        )

    @property
    def batch(self) -> int:
        """Rows held."""
        return self.keys[0].shape[0]

    @property
    def max_len(self) -> int:
        """Slots per row."""
        return self.keys[0].shape[2]

    def write(self, layer: int, slots: Tensor, k: Tensor, v: Tensor) -> None:
        """Store one new K/V per row ([B, n_head, 1, head_dim]) at that row's slot, in place."""
        index = slots.view(-1, 1, 1, 1).expand(-1, k.shape[1], 1, k.shape[3])
        self.keys[layer].scatter_(2, index, k)
        self.values[layer].scatter_(2, index, v)

    def select(self, rows: Tensor) -> KVCache:
        """A cache holding only ``rows`` (in that order); copies."""
        return KVCache(
            [t.index_select(0, rows) for t in self.keys],
            [t.index_select(0, rows) for t in self.values],
        )


class TokenEmbedding(nn.Module):
    """Embedding table kept under ``word_embeddings`` (upstream's key layout)."""

    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, dim)

    def forward(self, ids: Tensor) -> Tensor:
        """[...] ids → [..., dim]."""
        return self.word_embeddings(ids)


class PositionScale(nn.Module):
    """The learned scalar ``alpha`` that multiplies a sinusoidal table (the table is computed)."""

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1))


class SelfAttention(nn.Module):
    """Packed q|k|v in-projection and out-projection (parameter names as torch's MHA)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)


class T2SLayer(nn.Module):
    """Post-norm encoder layer: x = LN1(x + MHA(x)); x = LN2(x + W2·relu(W1·x))."""

    def __init__(self, dim: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.head_dim = dim // n_head
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.self_attn = SelfAttention(dim)
        self.linear1 = nn.Linear(dim, 4 * dim)
        self.linear2 = nn.Linear(4 * dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[B, T, D] → q, k, v each [B, n_head, T, head_dim]."""
        b, t, _ = x.shape
        packed = F.linear(x, self.self_attn.in_proj_weight, self.self_attn.in_proj_bias)
        q, k, v = packed.chunk(3, dim=-1)  # each (B, T, D)
        return tuple(  # type: ignore[return-value]
            z.view(b, t, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
            for z in (q, k, v)
        )

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """softmax((q·scale)·Kᵀ + mask)·V, heads merged: [B, Tq, D].

        Args:
            q: [B, nh, Tq, hs].
            k: [B, nh, Tk, hs].
            v: [B, nh, Tk, hs].
            mask: additive, broadcastable to [B, nh, Tq, Tk].
        """
        scores = (q * self.scale) @ k.transpose(-2, -1) + mask  # (B, nh, Tq, Tk)
        out = torch.softmax(scores, dim=-1) @ v  # (B, nh, Tq, hs)
        b, _, tq, _ = out.shape
        return out.transpose(1, 2).reshape(b, tq, -1)  # (B, Tq, D)

    def finish(self, x: Tensor, attn: Tensor) -> Tensor:
        """Out-projection, residual, LN1, ReLU FFN, residual, LN2: [B, T, D]."""
        x = self.norm1(x + self.self_attn.out_proj(attn))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention over ``x`` alone; returns (output [B, T, D], k, v [B, nh, T, hs])."""
        q, k, v = self.qkv(x)
        return self.finish(x, self.attend(q, k, v, mask)), k, v


class LayerStack(nn.Module):
    """Holds the layers under ``layers`` (upstream's ``h.layers.{i}`` keys)."""

    def __init__(self, dim: int, n_head: int, n_layer: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(T2SLayer(dim, n_head) for _ in range(n_layer))


class T2SModel(nn.Module):
    """Text (phones + BERT) and prompt semantic tokens → next semantic token logits."""

    def __init__(self, config: T2SConfig, max_positions: int = DEFAULT_MAX_POSITIONS) -> None:
        """Build an uninitialised-weights model of ``config``'s shape.

        Raises:
            ValueError: for shapes upstream cannot build either.
        """
        super().__init__()
        if config.embedding_dim != config.hidden_dim:
            raise ValueError(
                f"embedding_dim must equal hidden_dim, but got {config.embedding_dim} and "
                f"{config.hidden_dim}"
            )
        if config.hidden_dim % config.n_head:
            raise ValueError(
                f"hidden_dim must be divisible by n_head, but got {config.hidden_dim} and "
                f"{config.n_head}"
            )
        if config.eos != config.vocab_size - 1:
            raise ValueError(
                f"eos must be vocab_size - 1 = {config.vocab_size - 1}, got {config.eos}"
            )
        self.config = config
        d = config.hidden_dim
        self.bert_proj = nn.Linear(config.bert_dim, d)
        self.ar_text_embedding = TokenEmbedding(config.phoneme_vocab_size, d)
        self.ar_text_position = PositionScale()
        self.ar_audio_embedding = TokenEmbedding(config.vocab_size, d)
        self.ar_audio_position = PositionScale()
        self.h = LayerStack(d, config.n_head, config.n_layer)
        self.ar_predict_layer = nn.Linear(d, config.vocab_size, bias=False)
        self.register_buffer("pe", sinusoid_table(max_positions, d), persistent=False)

    @property
    def layers(self) -> nn.ModuleList:
        """The transformer layers."""
        return self.h.layers

    @property
    def max_positions(self) -> int:
        """Highest text or audio position + 1 the tables cover."""
        return self.pe.shape[0]

    # --- pieces ---------------------------------------------------------------------------

    def embed_text(self, phones: Tensor, bert: Tensor) -> Tensor:
        """``text_emb(phones) + bert_proj(bert) + alpha_text·pe[0..Sx)``.

        Args:
            phones: [B, Sx] int phone ids (pads: any valid id, e.g. 0).
            bert: [B, Sx, 1024] phone-level BERT features (upstream passes [B, 1024, Sx]).

        Returns:
            [B, Sx, D].
        """
        x = self.ar_text_embedding(phones) + self.bert_proj(bert)
        return x + self.ar_text_position.alpha * self.pe[: phones.shape[1]]

    def embed_audio(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """``audio_emb(tokens) + alpha_audio·pe[positions]``: [B, T] ids, positions → [B, T, D]."""
        return self.ar_audio_embedding(tokens) + self.ar_audio_position.alpha * self.pe[positions]

    def predict(self, hidden: Tensor) -> Tensor:
        """Logits head (no bias): [..., D] → [..., vocab_size]."""
        return self.ar_predict_layer(hidden)

    # --- reference inference ----------------------------------------------------------------

    def forward(
        self,
        phones: Tensor,
        phone_lens: Tensor,
        bert: Tensor,
        prompt: Tensor | None = None,
        prompt_lens: Tensor | None = None,
    ) -> Tensor:
        """Logits after the prefix (see :meth:`prefill`), [B, vocab_size]."""
        return self.prefill(phones, phone_lens, bert, prompt, prompt_lens)[0]

    def prefill(
        self,
        phones: Tensor,
        phone_lens: Tensor,
        bert: Tensor,
        prompt: Tensor | None = None,
        prompt_lens: Tensor | None = None,
        *,
        cache: KVCache | None = None,
        max_len: int | None = None,
    ) -> tuple[Tensor, KVCache]:
        """Run the whole prefix; fill cache slots [0, Sx + Sy) and return the next-token logits.

        Args:
            phones: [B, Sx] right-padded phone ids.
            phone_lens: [B] int, each >= 1.
            bert: [B, Sx, 1024].
            prompt: [B, Sy] right-padded prompt semantic tokens, or None (ref-free: no prompt).
            prompt_lens: [B] int (0 = ref-free row); None = all Sy.
            cache: buffers to write into (slots beyond Sx + Sy are left alone); allocated
                when None.
            max_len: slots of an allocated cache (default Sx + Sy).

        Returns:
            (logits at each row's last real position [B, vocab_size], cache).

        Raises:
            ValueError: on inconsistent shapes or a cache that is too short.
        """
        b, sx = phones.shape
        if prompt is None:
            prompt = phones.new_zeros(b, 0)
        sy = prompt.shape[1]
        if prompt_lens is None:
            prompt_lens = torch.full((b,), sy, dtype=torch.long, device=phones.device)
        bert_dim = self.config.bert_dim
        if bert.shape != (b, sx, bert_dim):
            raise ValueError(
                f"bert must be [B, Sx, {bert_dim}] = {(b, sx, bert_dim)}, got {tuple(bert.shape)}"
            )
        if max(sx, sy) > self.max_positions:
            raise ValueError(f"prefix longer than the {self.max_positions} position table rows")
        size = sx + sy
        dtype = self.pe.dtype
        if cache is None:
            cache = KVCache.empty(
                self.config, b, max_len or size, dtype=dtype, device=phones.device
            )
        if cache.max_len < size or cache.batch != b:
            raise ValueError(f"cache holds {cache.batch}×{cache.max_len} slots, need {b}×{size}")

        text = self.embed_text(phones, bert)
        audio = self.embed_audio(prompt, torch.arange(sy, device=phones.device).expand(b, sy))
        h = pack_prefix(text, phone_lens, audio, prompt_lens)  # (B, S, D)
        lens = phone_lens + prompt_lens
        mask = prefix_mask(phone_lens, lens, size, dtype)
        for i, layer in enumerate(self.layers):
            h, k, v = layer(h, mask)
            cache.keys[i][:, :, :size] = k
            cache.values[i][:, :, :size] = v
        last = h[torch.arange(b, device=h.device), lens - 1]  # (B, D)
        return self.predict(last), cache

    def step(self, tokens: Tensor, positions: Tensor, slots: Tensor, cache: KVCache) -> Tensor:
        """Feed one token per row; write its K/V at ``slots`` (in place) and return logits.

        Args:
            tokens: [B] semantic ids.
            positions: [B] audio positions (prompt length + step index).
            slots: [B] cache slots to write (text length + audio position).
            cache: the rows' cache; slots ``<= slots[i]`` are attended.

        Returns:
            [B, vocab_size].
        """
        h = self.embed_audio(tokens.view(-1, 1), positions.view(-1, 1))  # (B, 1, D)
        kv_len = int(slots.max()) + 1
        mask = step_mask(slots, kv_len, h.dtype)
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(h)  # (B, nh, 1, hs)
            cache.write(i, slots, k, v)
            keys = cache.keys[i][:, :, :kv_len]
            values = cache.values[i][:, :, :kv_len]
            h = layer.finish(h, layer.attend(q, keys, values, mask))
        return self.predict(h[:, 0])

    @torch.no_grad()
    def generate(
        self,
        phones: Tensor,
        phone_lens: Tensor,
        bert: Tensor,
        prompt: Tensor | None = None,
        prompt_lens: Tensor | None = None,
        *,
        params: SamplingParams | None = None,
        max_steps: int = MAX_STEPS,
        fixed_length: int | None = None,
        generator: torch.Generator | None = None,
        noise_fn: NoiseFn | None = None,
    ) -> list[Tensor]:
        """Decode a batch the way upstream's ``infer_panel_*`` loops do; see module docs.

        Each row stops on its own (sampled EOS or argmax EOS of the penalized logits; its last
        token is dropped) and is removed from the batch, as upstream's batched loop does. The
        noise of each step is drawn for the rows still running, in order, so with
        ``generator=None`` and the same ``torch.manual_seed`` the draws equal upstream's.

        Args:
            phones, phone_lens, bert, prompt, prompt_lens: as in :meth:`prefill`.
            params: sampler settings (default :class:`SamplingParams`).
            max_steps: cap on decode steps; a row that reaches it keeps all its tokens
                (upstream's naive loop then hands back its last 1499).
            fixed_length: decode exactly this many tokens per row with EOS masked out.
            generator: RNG of the Exp(1) noise; None = torch's global RNG.
            noise_fn: supplies the noise instead: ``noise_fn(step, (rows, columns))``.

        Returns:
            Per input row, the generated tokens (int64, 1-D), prompt excluded.
        """
        params = params or SamplingParams()
        params.validate()
        b = phones.shape[0]
        sy = 0 if prompt is None else prompt.shape[1]
        if prompt_lens is None:
            prompt_lens = torch.full((b,), sy, dtype=torch.long, device=phones.device)
        steps = max_steps if fixed_length is None else fixed_length
        if sy + steps > self.max_positions:
            raise ValueError(f"prompt + {steps} steps exceeds {self.max_positions} positions")
        logits, cache = self.prefill(
            phones, phone_lens, bert, prompt, prompt_lens, max_len=phones.shape[1] + sy + steps
        )
        # previous tokens per row: prompt (pads as −1), then one column per step
        history = torch.full((b, sy + steps), -1, dtype=torch.long, device=phones.device)
        if prompt is not None:
            real = torch.arange(sy, device=phones.device) < prompt_lens.view(-1, 1)
            history[:, :sy] = torch.where(real, prompt.long(), -1)
        rows = torch.arange(b, device=phones.device)  # input index of each running row
        text_lens, audio_lens = phone_lens.clone(), prompt_lens.clone()
        out: list[Tensor | None] = [None] * b
        eos = self.config.eos
        for t in range(steps):
            noise = None
            if noise_fn is not None:
                wide = fixed_length is None and t >= MIN_STEPS_BEFORE_EOS
                noise = noise_fn(t, (len(rows), logits.shape[-1] - (0 if wide else 1)))
            res = decode_step(
                logits,
                history[rows, : sy + t],
                t,
                params,
                eos,
                fixed_length=fixed_length is not None,
                noise=noise,
                generator=generator,
            )
            history[rows, sy + t] = res.tokens
            done = res.finished | (t == steps - 1)
            for r in torch.nonzero(done).flatten().tolist():
                end = sy + t + (0 if bool(res.finished[r]) else 1)
                out[int(rows[r])] = history[rows[r], sy:end].clone()
            if bool(done.all()):
                break
            keep = torch.nonzero(~done).flatten()
            if len(keep) < len(rows):
                rows, cache = rows[keep], cache.select(keep)
                text_lens, audio_lens = text_lens[keep], audio_lens[keep]
            pos = audio_lens + t
            logits = self.step(res.tokens[keep], pos, text_lens + pos, cache)
        return [o if o is not None else history.new_zeros(0) for o in out]
