"""The transformer: llama / qwen2 / starcoder2 with a static, slot-organised KV cache.

gpt-fast style: plain modules, one forward. The architecture differences are data (the ModelConfig
flags: norm type, MLP type, which linears carry a bias), not subclasses.

KV cache layout: one tensor per K and V of shape [n_layers, n_slots, n_kv_heads, max_seq, head_dim].
A *slot* holds one sequence. A batched forward takes, for every row, the slot it writes to and the
positions of its tokens, so rows at different positions decode together (per-row RoPE and masks).
The cache is allocated uninitialised (pages are only touched when used) and zeroed lazily, per slot, up
to the highest position any forward may read: stale-but-finite values are masked, never NaN * 0.

Weights are stored fused (q|k|v in one Linear, gate|up in one Linear) so a decode step runs few ops.
On CUDA weights are bf16/fp16 with norms and softmax in fp32. On the CPU the default (`build_packed_model`) keeps
every matrix as the checkpoint stores it (a GGUF's quantized blocks, safetensors' bf16/fp16/fp32), packed for
model_backend/cpu_kernels.py, for prompts and decode steps alike; the embedding stays quantized too (only the
looked-up rows are dequantized), and a llama / qwen2 model then runs on the kernels' row functions
(`Transformer._forward_kernels`: one C call per decode step for all layers). `build_model` gives the dense
fp32 reference (and the CUDA model); fbgemm fp16 / int8 packs of it (`quantize_linears`) remain as opt-in
formats.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # the real class lives in weights.py; the model only reads attributes
    from model_backend.weights import ModelConfig


KV_CHUNK = 256  # the KV cache grows in steps of this many positions


class Linear(nn.Linear):
    """nn.Linear without the random init: every weight is assigned from a checkpoint (random init of meta
    tensors goes through torch._refs and imports torch._dynamo, ~3 s of cold start)."""

    def reset_parameters(self) -> None:
        pass


class Norm(nn.Module):
    """RMSNorm or LayerNorm (with bias), computed in fp32 whatever the activation dtype."""

    def __init__(self, dim: int, eps: float, kind: str, device: Any = None) -> None:
        super().__init__()
        self.kind, self.eps = kind, eps
        self.weight = nn.Parameter(torch.ones(dim, device=device))
        self.bias = nn.Parameter(torch.zeros(dim, device=device)) if kind == "layernorm" else None

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        xf = x.float()
        if self.kind == "layernorm":
            out = F.layer_norm(xf, (xf.shape[-1],), self.weight, self.bias, self.eps)
        else:
            out = F.rms_norm(xf, (xf.shape[-1],), self.weight, self.eps)
        return out.to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, device: Any = None) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        qkv_out = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
        self.wqkv = Linear(cfg.hidden_size, qkv_out, bias=cfg.qkv_bias, device=device)
        self.wo = Linear(cfg.n_heads * cfg.head_dim, cfg.hidden_size, bias=cfg.out_bias, device=device)
        self.decode_kernel: Any = None  # cpu_kernels.attention_kernel(): one C call per row of a decode step

    def forward(
        self,
        x: Tensor,
        rope: Tensor,
        mask: Tensor | None,
        cache: tuple[Tensor, Tensor],
        rows: Tensor,
        pos: Tensor,
        read: slice | Tensor,
        kv_len: int,
        single: tuple[int, int] | None,
        steps: Sequence[tuple[int, int]] | None = None,
    ) -> Tensor:
        """steps: each row's (slot, first position)."""
        b, t, _ = x.shape
        hd, nh, nkv = self.head_dim, self.n_heads, self.n_kv
        qkv = self.wqkv(x)
        k_cache, v_cache = cache
        fn = None if self.decode_kernel is None else self.decode_kernel.get(k_cache.dtype)
        if steps is not None and fn is not None and qkv.dtype == torch.float32:
            # one C call per row and token, in order: RoPE, cache write, attention over its own slot up to its
            # position (cpu_kernels.attention_kernel). Prompts go through it too, token by token, so a token's
            # result never depends on how it was batched or whether its prefix came from the cache (with
            # int8-rounded activations a last-bit difference in attention can flip a rounding and change the text)
            return self.wo(self._kernel_steps(fn, qkv.contiguous(), rope, k_cache, v_cache, steps))
        # RoPE on q and k at once: their weights are stored with each head's dims interleaved in pairs,
        # so a rotation is one complex multiply (q.k is unchanged by the same permutation of both)
        qk = qkv[..., : (nh + nkv) * hd].float().reshape(b, t, nh + nkv, hd // 2, 2)
        qk = torch.view_as_real(torch.view_as_complex(qk) * rope).reshape(b, t, nh + nkv, hd).to(x.dtype)
        q, k = qk[:, :, :nh], qk[:, :, nh:]
        v = qkv[..., (nh + nkv) * hd :].view(b, t, nkv, hd)
        if single is not None:  # one row: a plain slice copy (cheaper than index_put)
            slot, p0 = single
            k_cache[slot, :, p0 : p0 + t] = k[0].transpose(0, 1)
            v_cache[slot, :, p0 : p0 + t] = v[0].transpose(0, 1)
        else:  # advanced indices on dims 0 and 2 -> the value is laid out [b, t, heads, hd]
            k_cache[rows, :, pos] = k.to(k_cache.dtype)
            v_cache[rows, :, pos] = v.to(v_cache.dtype)
        keys = k_cache[read, :, :kv_len]
        values = v_cache[read, :, :kv_len]
        if keys.dtype != q.dtype:  # an fp16 cache under fp32 activations (packed CPU weights)
            keys, values = keys.to(q.dtype), values.to(q.dtype)
        if t > 1:
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), keys, values, attn_mask=mask, enable_gqa=nh != nkv
            )
            return self.wo(out.transpose(1, 2).reshape(b, t, nh * hd))
        # decode: the query heads of one KV head form a [g, hd] matrix -> two small matmuls, no repeat
        g = nh // nkv
        if b == 1:  # 3-D bmm on views: no broadcast/expand
            scores = torch.bmm(q.reshape(nkv, g, hd), keys[0].transpose(1, 2)).float() * (hd**-0.5)
            probs = torch.softmax(scores, dim=-1).to(values.dtype)
            return self.wo(torch.bmm(probs, values[0]).reshape(1, 1, nh * hd))
        scores = torch.matmul(q.reshape(b, nkv, g, hd), keys.transpose(-1, -2)).float() * (hd**-0.5)
        if mask is not None:  # [b, nkv, g, kv_len] + [b, 1, 1, kv_len]
            scores = scores + mask
        probs = torch.softmax(scores, dim=-1).to(values.dtype)
        out = torch.matmul(probs, values)  # [b, nkv, g, hd]
        return self.wo(out.reshape(b, 1, nh * hd))

    def _kernel_steps(
        self,
        fn: Any,
        qkv: Tensor,
        rope: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        steps: Sequence[tuple[int, int]],
    ) -> Tensor:
        """Attention through the C step (see forward): each row's tokens in order; the heads' outputs."""
        b, t, _ = qkv.shape
        hd, nh, nkv = self.head_dim, self.n_heads, self.n_kv
        out = torch.empty(b, t, nh * hd)
        rope_f = torch.view_as_real(rope).contiguous()  # [b, t, 1, hd/2, 2]
        for i, (slot, p0) in enumerate(steps):
            kc, vc = k_cache[slot], v_cache[slot]  # [nkv, capacity, hd], contiguous
            for j in range(t):
                rc = fn(
                    qkv[i, j].data_ptr(),
                    rope_f[i, j].data_ptr(),
                    kc.data_ptr(),
                    vc.data_ptr(),
                    out[i, j].data_ptr(),
                    nh,
                    nkv,
                    hd,
                    p0 + j,
                    kc.stride(0),
                    hd**-0.5,
                )
                if rc != 0:
                    raise RuntimeError(f"attention kernel failed (code {rc})")
        return out


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, device: Any = None) -> None:
        super().__init__()
        self.kind = cfg.mlp_type
        inter = cfg.intermediate_size
        if self.kind == "swiglu":
            self.w_in = Linear(cfg.hidden_size, 2 * inter, bias=cfg.mlp_bias, device=device)  # gate | up
        else:
            self.w_in = Linear(cfg.hidden_size, inter, bias=cfg.mlp_bias, device=device)  # c_fc
        self.w_out = Linear(inter, cfg.hidden_size, bias=cfg.mlp_bias, device=device)  # down / c_proj

    def forward(self, x: Tensor) -> Tensor:
        h = self.w_in(x)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")
        return self.w_out(h)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, device: Any = None) -> None:
        super().__init__()
        self.attn_norm = Norm(cfg.hidden_size, cfg.norm_eps, cfg.norm_type, device)
        self.attn = Attention(cfg, device)
        self.ffn_norm = Norm(cfg.hidden_size, cfg.norm_eps, cfg.norm_type, device)
        self.mlp = MLP(cfg, device)


def rope_table(head_dim: int, max_seq: int, theta: float, scaling: float, device: torch.device) -> Tensor:
    """complex64 [max_seq, head_dim // 2]: e^(i * pos / scaling * theta^(-2j / head_dim))."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim))
    t = torch.arange(max_seq, dtype=torch.float64, device=device) / scaling
    freqs = torch.outer(t, inv_freq)
    return torch.polar(torch.ones_like(freqs), freqs).to(torch.complex64)


def interleave_rows(w: Tensor, n_heads: int, head_dim: int) -> Tensor:
    """Reorder each head's rows from Hugging Face's rotate-half layout (i, i + hd/2) to adjacent pairs."""
    half = head_dim // 2
    perm = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).flatten()
    shape = w.shape
    return w.reshape(n_heads, head_dim, -1)[:, perm].reshape(shape)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, device: Any = None) -> None:
        """device="meta" builds the structure without allocating (build_model then assigns the weights)."""
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(
            cfg.vocab_size,
            cfg.hidden_size,
            _weight=torch.empty(cfg.vocab_size, cfg.hidden_size, device=device),
        )
        self.layers = nn.ModuleList(Block(cfg, device) for _ in range(cfg.n_layers))
        self.norm = Norm(cfg.hidden_size, cfg.norm_eps, cfg.norm_type, device)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False, device=device)
        self.k_cache: Tensor | None = None
        self.v_cache: Tensor | None = None
        self.rope: Tensor | None = None
        self.rope_pairs: Tensor | None = (
            None  # the rope table as fp32 cos/sin pairs [max_seq, hd] (C kernels)
        )
        self.layer_stack: Any = None  # cpu_kernels.LayerStack (use_cpu_kernels): the C-kernel forward
        self.kv_dtype: torch.dtype = torch.float32
        self.n_slots = 0
        self.max_seq = 0
        self.capacity = 0  # positions the cache holds now (grows up to max_seq)
        self._zeroed: list[int] = []  # per slot: positions [0, zeroed) hold finite values

    # -- setup ---------------------------------------------------------------------------------------
    def use_cpu_kernels(self) -> bool:
        """Decode-step attention as one C call per row and layer (model_backend/cpu_kernels.py; fp32 or fp16 KV
        cache) when the kernel builds here and the model runs fp32 on the CPU. Returns whether it is on."""
        from model_backend import cpu_kernels

        cfg = self.config
        fn = cpu_kernels.attention_kernel() if self.embed.weight.device.type == "cpu" else None
        # what the kernel handles (it checks again and fails loudly): fp32, head_dim % 8, <= 16 query heads per KV head
        if (
            self.embed.weight.dtype != torch.float32
            or cfg.head_dim % 8
            or cfg.head_dim > 256
            or cfg.n_heads % cfg.n_kv_heads
            or cfg.n_heads // cfg.n_kv_heads > 16
        ):
            fn = None
        for layer in self.layers:
            layer.attn.decode_kernel = fn
        self.layer_stack = None if fn is None else self._layer_stack()
        return fn is not None

    def _layer_stack(self) -> Any:
        """cpu_kernels.LayerStack over every layer when this is a packed llama / qwen2 model (RMSNorm, SwiGLU,
        every matrix a non-F32 QuantLinear or FusedLinear of them), else None (the torch path runs)."""
        from model_backend import cpu_kernels

        cfg = self.config

        def parts(m: nn.Module) -> list[Any] | None:
            ps = list(m.parts) if isinstance(m, FusedLinear) else [m]
            ok = all(isinstance(p, cpu_kernels.QuantLinear) and p.weight.qtype != "F32" for p in ps)
            return ps if ok and len(ps) <= 3 else None

        if cfg.norm_type == "layernorm" or cfg.mlp_type != "swiglu" or cfg.hidden_size % 8:
            return None
        layers = []
        for ly in self.layers:
            mats = {
                "qkv": parts(ly.attn.wqkv),
                "wo": parts(ly.attn.wo),
                "w_in": parts(ly.mlp.w_in),
                "w_out": parts(ly.mlp.w_out),
            }
            if any(v is None for v in mats.values()) or ly.mlp.w_out.in_features % 8:
                return None
            layers.append({"attn_norm": ly.attn_norm.weight, "ffn_norm": ly.ffn_norm.weight, **mats})
        shape = (cfg.hidden_size, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.intermediate_size)
        return cpu_kernels.LayerStack(layers, shape, cfg.norm_eps, cfg.head_dim**-0.5)

    def setup_caches(
        self,
        n_slots: int,
        max_seq: int,
        *,
        rope_theta: float | None = None,
        rope_scaling: float | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """A KV cache of `n_slots` sequences of up to `max_seq` positions, sized from the model (n_kv_heads x
        head_dim per layer). Its capacity grows with use (ensure_capacity): a short session never allocates
        max_seq positions."""
        cfg = self.config
        device = self.embed.weight.device
        self.kv_dtype = dtype or self.embed.weight.dtype
        theta = rope_theta if rope_theta is not None else cfg.rope_theta
        scaling = rope_scaling if rope_scaling is not None else cfg.rope_scaling
        self.rope = rope_table(cfg.head_dim, max_seq, theta, scaling, device)
        self.rope_pairs = torch.view_as_real(self.rope).reshape(max_seq, cfg.head_dim).contiguous()
        self.n_slots, self.max_seq = n_slots, max_seq
        self._zeroed = [0] * n_slots
        self.k_cache = self.v_cache = None
        self.capacity = 0
        self.ensure_capacity(min(max_seq, KV_CHUNK))

    def ensure_capacity(self, length: int) -> None:
        """Grow the cache (doubling, in KV_CHUNK steps, at most max_seq) so that it holds `length` positions."""
        if length <= self.capacity:
            return
        if length > self.max_seq:
            raise ValueError(f"sequence of {length} tokens exceeds the KV cache length {self.max_seq}")
        cfg = self.config
        cap = min(self.max_seq, -(-max(length, 2 * self.capacity) // KV_CHUNK) * KV_CHUNK)
        shape = (cfg.n_layers, self.n_slots, cfg.n_kv_heads, cap, cfg.head_dim)
        # normal tensors even when a forward (inference mode) grows the cache: the engine also writes to it
        # outside inference mode (copy_slot)
        with torch.inference_mode(False):
            # uninitialised on purpose: zeroed lazily per slot (see ensure_zeroed), so unused pages cost nothing
            k = torch.empty(shape, dtype=self.kv_dtype, device=self.rope.device)
            v = torch.empty(shape, dtype=self.kv_dtype, device=self.rope.device)
            used = max(self._zeroed, default=0)
            if self.k_cache is not None and used:
                k[:, :, :, :used] = self.k_cache[:, :, :, :used]
                v[:, :, :, :used] = self.v_cache[:, :, :, :used]
        self.k_cache, self.v_cache, self.capacity = k, v, cap

    def ensure_zeroed(self, slots: Sequence[int], upto: int) -> None:
        assert self.k_cache is not None and self.v_cache is not None
        self.ensure_capacity(upto)
        for s in slots:
            z = self._zeroed[s]
            if z < upto:
                self.k_cache[:, s, :, z:upto].zero_()
                self.v_cache[:, s, :, z:upto].zero_()
                self._zeroed[s] = upto

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` cached positions of slot `src` into slot `dst` (shared prefill)."""
        assert self.k_cache is not None and self.v_cache is not None
        if src == dst or length <= 0:
            return
        self.ensure_capacity(length)
        self.k_cache[:, dst, :, :length] = self.k_cache[:, src, :, :length]
        self.v_cache[:, dst, :, :length] = self.v_cache[:, src, :, :length]
        self._zeroed[dst] = max(self._zeroed[dst], length)

    def reorder_slots(self, src: Sequence[int], dst: Sequence[int], length: int) -> None:
        """dst[i] <- src[i] for all i at once (beam search), first `length` positions."""
        assert self.k_cache is not None and self.v_cache is not None
        if list(src) == list(dst) or length <= 0:
            return
        self.ensure_capacity(length)
        s = torch.tensor(list(src), device=self.k_cache.device)
        d = torch.tensor(list(dst), device=self.k_cache.device)
        self.k_cache[:, d, :, :length] = self.k_cache[:, s, :, :length].clone()
        self.v_cache[:, d, :, :length] = self.v_cache[:, s, :, :length].clone()
        for x in dst:
            self._zeroed[x] = max(self._zeroed[x], length)

    # -- forward -------------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(
        self, tokens: Tensor, start_pos: Sequence[int], slots: Sequence[int], *, all_logits: bool = False
    ) -> Tensor:
        """tokens [b, t]; row i holds t new tokens at positions start_pos[i].. of cache slot slots[i].

        Returns fp32 logits [b, t, vocab] (all_logits) or [b, vocab] for each row's last token.
        """
        assert self.k_cache is not None and self.v_cache is not None and self.rope is not None
        b, t = tokens.shape
        device = tokens.device
        kv_len = max(start_pos) + t
        if kv_len > self.max_seq:
            raise ValueError(f"sequence of {kv_len} tokens exceeds the KV cache length {self.max_seq}")
        self.ensure_zeroed(slots, kv_len)
        if self.layer_stack is not None and tokens.device.type == "cpu":
            return self._forward_kernels(tokens, start_pos, slots, all_logits)
        pos = torch.tensor(list(start_pos), device=device).unsqueeze(1) + torch.arange(t, device=device)
        rows = torch.tensor(list(slots), device=device).unsqueeze(1)
        s0 = slots[0]
        read: slice | Tensor = (
            slice(s0, s0 + b) if list(slots) == list(range(s0, s0 + b)) else rows.squeeze(1)
        )
        # row i, query j may attend to key positions <= pos[i, j]
        mask: Tensor | None = None
        if t > 1:
            mask = (torch.arange(kv_len, device=device).view(1, 1, kv_len) <= pos.unsqueeze(-1)).unsqueeze(1)
        elif min(start_pos) + 1 < kv_len:  # decode rows of different lengths: additive mask [b, 1, 1, kv]
            valid = torch.arange(kv_len, device=device).view(1, kv_len) <= pos
            mask = (
                torch.zeros(b, kv_len, device=device)
                .masked_fill_(~valid, float("-inf"))
                .view(b, 1, 1, kv_len)
            )
        rope = self.rope[pos].unsqueeze(2)  # [b, t, 1, hd/2]
        single = (slots[0], start_pos[0]) if b == 1 else None
        steps = list(zip(slots, start_pos, strict=True))
        x = self.embed(tokens)
        for i, layer in enumerate(self.layers):
            x = x + layer.attn(
                layer.attn_norm(x),
                rope,
                mask,
                (self.k_cache[i], self.v_cache[i]),
                rows,
                pos,
                read,
                kv_len,
                single,
                steps,
            )
            x = x + layer.mlp(layer.ffn_norm(x))
        if not all_logits:
            x = x[:, -1]
        return self.lm_head(self.norm(x)).float()

    def _forward_kernels(
        self, tokens: Tensor, start_pos: Sequence[int], slots: Sequence[int], all_logits: bool
    ) -> Tensor:
        """forward() on the C kernels' row functions (layer_stack): a one-row decode step is one C call for
        every layer; other batches run layer by layer on the same functions (RMSNorm, matmul, each row's
        attention as its decode steps would, SwiGLU), so every row gets the bits a decode step gives it."""
        from model_backend import cpu_kernels as ck

        assert self.k_cache is not None and self.v_cache is not None and self.rope_pairs is not None
        cfg = self.config
        b, t = tokens.shape
        x = self.embed(tokens)  # [b, t, dim] fp32, a new tensor
        if b == 1 and t == 1:
            p = start_pos[0]
            self.layer_stack.run(x.view(-1), self.rope_pairs[p], self.k_cache, self.v_cache, slots[0], p)
        else:
            heads, eps, scale = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim), cfg.norm_eps, cfg.head_dim**-0.5
            for i, layer in enumerate(self.layers):
                qkv = layer.attn.wqkv(ck.rmsnorm(x, layer.attn_norm.weight, eps)).contiguous()
                att = torch.empty(b, t, cfg.n_heads * cfg.head_dim)
                for r, (slot, p0) in enumerate(zip(slots, start_pos, strict=True)):
                    k, v, rope = self.k_cache[i, slot], self.v_cache[i, slot], self.rope_pairs[p0 : p0 + t]
                    att[r] = ck.attention_rows(qkv[r], rope, k, v, heads, p0, scale)
                x = x + layer.attn.wo(att)
                h = layer.mlp.w_in(ck.rmsnorm(x, layer.ffn_norm.weight, eps))
                x = x + layer.mlp.w_out(ck.swiglu(h))
        if not all_logits:
            x = x[:, -1]
        return self.lm_head(ck.rmsnorm(x, self.norm.weight, cfg.norm_eps))


# -- building from a checkpoint ----------------------------------------------------------------------


def fused_state_dict(cfg: ModelConfig, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face tensor names -> this module's (fused) names."""

    def get(name: str) -> Tensor:
        if name not in tensors:
            raise KeyError(f"checkpoint is missing tensor {name!r} (arch {cfg.arch})")
        return tensors[name]

    sd: dict[str, Tensor] = {"embed.weight": get("model.embed_tokens.weight")}
    for i in range(cfg.n_layers):
        p, o = f"model.layers.{i}.", f"layers.{i}."
        att = p + "self_attn."
        sd[o + "attn.wqkv.weight"] = _fused_qkv(cfg, get, att, "weight")
        if cfg.qkv_bias:
            sd[o + "attn.wqkv.bias"] = _fused_qkv(cfg, get, att, "bias")
        sd[o + "attn.wo.weight"] = get(att + "o_proj.weight")
        if cfg.out_bias:
            sd[o + "attn.wo.bias"] = get(att + "o_proj.bias")
        if cfg.mlp_type == "swiglu":
            sd[o + "mlp.w_in.weight"] = torch.cat(
                [get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")]
            )
            sd[o + "mlp.w_out.weight"] = get(p + "mlp.down_proj.weight")
            if cfg.mlp_bias:
                sd[o + "mlp.w_in.bias"] = torch.cat(
                    [get(p + "mlp.gate_proj.bias"), get(p + "mlp.up_proj.bias")]
                )
                sd[o + "mlp.w_out.bias"] = get(p + "mlp.down_proj.bias")
        else:
            sd[o + "mlp.w_in.weight"] = get(p + "mlp.c_fc.weight")
            sd[o + "mlp.w_out.weight"] = get(p + "mlp.c_proj.weight")
            if cfg.mlp_bias:
                sd[o + "mlp.w_in.bias"] = get(p + "mlp.c_fc.bias")
                sd[o + "mlp.w_out.bias"] = get(p + "mlp.c_proj.bias")
        for ours, theirs in (("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
            sd[f"{o}{ours}.weight"] = get(f"{p}{theirs}.weight")
            if cfg.norm_type == "layernorm":
                sd[f"{o}{ours}.bias"] = get(f"{p}{theirs}.bias")
    sd["norm.weight"] = get("model.norm.weight")
    if cfg.norm_type == "layernorm":
        sd["norm.bias"] = get("model.norm.bias")
    if "lm_head.weight" in tensors and not cfg.tie_word_embeddings:
        sd["lm_head.weight"] = tensors["lm_head.weight"]
    else:
        sd["lm_head.weight"] = sd["embed.weight"]
    return sd


def _fused_qkv(cfg: ModelConfig, get: Any, prefix: str, kind: str) -> Tensor:
    q, k, v = (get(f"{prefix}{n}_proj.{kind}") for n in "qkv")
    return torch.cat(
        [interleave_rows(q, cfg.n_heads, cfg.head_dim), interleave_rows(k, cfg.n_kv_heads, cfg.head_dim), v]
    )


class _Dense(dict):
    """Checkpoint tensors converted one at a time on first access (float32 from QTensors, then `dtype` on
    `device`; norms stay fp32), so building a dense model never holds a float32 copy of every weight at once."""

    def __init__(self, tensors: dict[str, Any], device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.src, self.device, self.dtype = tensors, device, dtype

    def __contains__(self, name: object) -> bool:
        return name in self.src

    def __getitem__(self, name: str) -> Tensor:
        from model_backend.weights import as_float32

        t = self.src[name]
        want = torch.float32 if "norm" in name else self.dtype
        return (as_float32(t) if not isinstance(t, Tensor) else t).to(device=self.device, dtype=want)


def build_model(
    cfg: ModelConfig,
    tensors: dict[str, Any],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Transformer:
    """A Transformer holding the checkpoint's weights dense in `dtype` (norm weights stay fp32): the fp32
    reference on the CPU, bf16/fp16 on CUDA (quantized GGUF tensors are dequantized one by one)."""
    device = torch.device(device)
    model = Transformer(cfg, device="meta")
    sd = fused_state_dict(cfg, _Dense(tensors, device, dtype))
    ready: dict[str, Tensor] = {}
    for name, tensor in sd.items():
        want = torch.float32 if "norm" in name else dtype
        ready[name] = tensor.to(device=device, dtype=want).contiguous()
    model.load_state_dict(ready, assign=True, strict=True)
    if sd["lm_head.weight"] is sd["embed.weight"]:
        model.lm_head.weight = model.embed.weight  # tied: one tensor, not two copies
    return model.eval().requires_grad_(False)


# -- weights as stored (CPU) -------------------------------------------------------------------------

INTERLEAVE_ALL_BYTES = (
    256 << 20
)  # models up to this size get every matrix in the x8 layout (build_packed_model)

_FLOAT_TYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def _as_stored(t: Any) -> tuple[str, Any]:
    """(ggml type, uint8 [rows, row bytes]) of a checkpoint matrix, without converting it: a QTensor's blocks
    (a view of the file unless its rows are reordered), a float tensor's own bytes."""
    if isinstance(t, Tensor):
        t = t.detach().contiguous()
        return _FLOAT_TYPES[t.dtype], t.view(torch.uint8).reshape(t.shape[0], -1).numpy()
    return t.dtype, t.raw()


def _rows(t: Any, idx: Tensor) -> Any:
    return t.index_select(0, idx) if isinstance(t, Tensor) else t.take_rows(idx.numpy())


class QuantEmbedding(nn.Module):
    """Token embedding kept as stored: a lookup dequantizes only the rows it reads."""

    def __init__(self, weight: Any, dim: int) -> None:
        super().__init__()
        self.packed, self.dim = weight, dim
        self.weight = torch.empty(0)  # the activations' dtype and device, for code that asks the embedding

    def forward(self, tokens: Tensor) -> Tensor:
        from model_backend import cpu_kernels

        return cpu_kernels.dequantize_rows(self.packed, tokens).view(*tokens.shape, self.dim)


class FusedLinear(nn.Module):
    """Several packed Linears on the same input whose outputs are concatenated (q|k|v or gate|up stored in
    different types, as Q4_K_M files do)."""

    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.out_features = sum(p.out_features for p in parts)
        self.in_features = parts[0].in_features

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([p(x) for p in self.parts], dim=-1)


def packed_linear(
    parts: list[Any], biases: list[Tensor] | None, release: Any = None, interleave: bool = False
) -> nn.Module:
    """One Linear over row blocks `parts` (checkpoint matrices, same input size) as stored. Consecutive parts of
    one type are packed together (their rows concatenated: one kernel call instead of several per step), in the
    8-row interleaved layout where the type has one (cpu_kernels.interleave_parts; also a single part when
    `interleave`); the copied source pages are handed to `release(QTensor)` so they stop counting in RSS. Parts
    of different types (a Q4_K_M file mixes Q4_K and Q6_K) become the parts of a FusedLinear. Otherwise a single
    part is packed on its own bytes (a view of the file)."""
    import numpy as np

    from model_backend import cpu_kernels

    groups: list[tuple[str, list[Any], list[Tensor]]] = []
    for i, part in enumerate(parts):
        bias = [] if biases is None else [biases[i].float()]
        if groups and groups[-1][0] == _as_stored(part)[0]:
            groups[-1][1].append(part)
            groups[-1][2].extend(bias)
        else:
            groups.append((_as_stored(part)[0], [part], bias))
    mods: list[nn.Module] = []
    k = parts[0].shape[1]
    for qtype, members, bs in groups:
        raws = [_as_stored(m)[1] for m in members]
        packed = cpu_kernels.interleave_parts(raws, qtype, k) if len(raws) > 1 or interleave else None
        if packed is None:
            raw = raws[0] if len(raws) == 1 else np.concatenate(raws)
            packed = cpu_kernels.pack(raw, qtype, (raw.shape[0], k))
        if (len(raws) > 1 or packed.interleaved) and release is not None:
            for m in members:
                release(m)
        mods.append(cpu_kernels.QuantLinear(packed, torch.cat(bs) if bs else None))
    return mods[0] if len(mods) == 1 else FusedLinear(mods)


def _pack_layer(layer: Any, p: str, cfg: ModelConfig, get: Any, vec: Any, release: Any, small: bool) -> None:
    """One decoder layer's weights (tensor names under prefix ``p``) packed into ``layer``: q|k|v and the MLP's
    input projections fused, q and k rows in the order our RoPE wants."""

    def qk_rows(n_heads: int) -> Tensor:
        return interleave_rows(torch.arange(n_heads * cfg.head_dim), n_heads, cfg.head_dim)

    att = p + "self_attn."
    perms = (qk_rows(cfg.n_heads), qk_rows(cfg.n_kv_heads), None)
    qkv = [get(f"{att}{n}_proj.weight") for n in "qkv"]
    qkv = [t if perm is None else _rows(t, perm) for t, perm in zip(qkv, perms, strict=True)]
    qkv_b = None
    if cfg.qkv_bias:
        qkv_b = [get(f"{att}{n}_proj.bias").float() for n in "qkv"]
        qkv_b = [b if perm is None else b[perm] for b, perm in zip(qkv_b, perms, strict=True)]
    layer.attn.wqkv = packed_linear(qkv, qkv_b, release)
    layer.attn.wo = packed_linear(
        [get(att + "o_proj.weight")], [get(att + "o_proj.bias")] if cfg.out_bias else None, release, small
    )
    ins, out = (("gate_proj", "up_proj"), "down_proj") if cfg.mlp_type == "swiglu" else (("c_fc",), "c_proj")
    layer.mlp.w_in = packed_linear(
        [get(f"{p}mlp.{n}.weight") for n in ins],
        [get(f"{p}mlp.{n}.bias") for n in ins] if cfg.mlp_bias else None,
        release,
    )
    layer.mlp.w_out = packed_linear(
        [get(f"{p}mlp.{out}.weight")],
        [get(f"{p}mlp.{out}.bias")] if cfg.mlp_bias else None,
        release,
        small,
    )
    for ours, theirs in (("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
        norm = getattr(layer, ours)
        norm.weight = vec(f"{p}{theirs}.weight")
        if cfg.norm_type == "layernorm":
            norm.bias = vec(f"{p}{theirs}.bias")


def build_packed_model(cfg: ModelConfig, tensors: dict[str, Any], release: Any = None) -> Transformer:
    """The CPU model on weights as stored (see the module docstring). Raises cpu_kernels.UnsupportedQuantType
    for a tensor type the kernels do not multiply. release(QTensor): called for each tensor whose bytes were
    copied (fused or interleaved), so its pages of the mapped file can leave the resident set (Checkpoint.release)."""
    from model_backend import cpu_kernels

    def get(name: str) -> Any:
        if name not in tensors:
            raise KeyError(f"checkpoint is missing tensor {name!r} (arch {cfg.arch})")
        return tensors[name]

    def vec(name: str) -> nn.Parameter:
        return nn.Parameter(get(name).float().contiguous(), requires_grad=False)

    model = Transformer(cfg, device="meta")
    # a small model's single matrices are re-laid out too (a copy of under INTERLEAVE_ALL_BYTES: well under a
    # second); bigger ones only re-lay out what fusing copies anyway, so their load time and RSS stay the file's
    small = sum(int(getattr(t, "nbytes", 0)) for t in tensors.values()) <= INTERLEAVE_ALL_BYTES
    e = get("model.embed_tokens.weight")
    qtype, raw = _as_stored(e)
    embed = cpu_kernels.pack(raw, qtype, tuple(e.shape))
    if small:
        embed = cpu_kernels.interleave(embed)  # also the tied lm_head's weight
        if embed.interleaved and release is not None:
            release(e)
    model.embed = QuantEmbedding(embed, cfg.hidden_size)
    for i, layer in enumerate(model.layers):
        _pack_layer(layer, f"model.layers.{i}.", cfg, get, vec, release, small)
    model.norm.weight = vec("model.norm.weight")
    if cfg.norm_type == "layernorm":
        model.norm.bias = vec("model.norm.bias")
    if "lm_head.weight" in tensors and not cfg.tie_word_embeddings:
        model.lm_head = packed_linear([tensors["lm_head.weight"]], None, release, small)
    else:
        model.lm_head = cpu_kernels.QuantLinear(embed, None)  # tied: the embedding's blocks, not a copy
    return model.eval().requires_grad_(False)


CPU_WEIGHT_FORMATS = ("fp16", "int8", "blocks")


class PackedLinear(nn.Module):
    """A CPU Linear whose weight is packed by fbgemm: fp16 weights (fp32 activations and accumulation), or
    int8 per-channel weights with dynamically quantised activations. One pack per layer, at load time."""

    def __init__(self, linear: nn.Linear, fmt: str) -> None:
        super().__init__()
        self.fmt = fmt
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float().contiguous()
        b = None if linear.bias is None else linear.bias.detach().float().contiguous()
        if fmt == "fp16":
            self.packed = torch.ops.quantized.linear_prepack_fp16(w, b)
        else:
            scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
            zero = torch.zeros(w.shape[0], dtype=torch.long)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                qw = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(qw, b)

    def forward(self, x: Tensor) -> Tensor:
        if self.fmt == "fp16":
            return torch.ops.quantized.linear_dynamic_fp16(x, self.packed)
        return torch.ops.quantized.linear_dynamic(x, self.packed, True)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self.fmt}"


def pack_targets(model: Transformer, fmt: str) -> list[tuple[nn.Module, str, nn.Linear, str]]:
    """The (parent, attribute, Linear, qualified name) of each layer `quantize_linears` replaces. A tied lm_head
    gets its own packed copy; the embedding keeps the fp32 table for lookups."""
    if fmt not in CPU_WEIGHT_FORMATS:
        raise ValueError(f"unknown CPU weight format {fmt!r}; expected one of {CPU_WEIGHT_FORMATS}")
    if "fbgemm" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "fbgemm"
    return [
        (parent, name, child, f"{pname}.{name}" if pname else name)
        for pname, parent in model.named_modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]


def pack_linear(linear: nn.Linear, fmt: str, block: Any = None) -> nn.Module:
    """One dense layer as an fbgemm pack in CPU weight format `fmt` ("blocks", the as-stored format, is built by
    build_packed_model from the checkpoint instead; here it means fp16). `block` is unused (kept for callers)."""
    del block
    return PackedLinear(linear, "fp16" if fmt == "blocks" else fmt)


def quantize_linears(model: Transformer, fmt: str, blocks: Any = None) -> Transformer:
    """CPU, opt-in: swap every dense Linear (incl. lm_head) of a `build_model` model for an fbgemm pack.

    fmt "fp16": fp16 weights, fp32 activations and accumulation (logits equal to fp32 within fp16 rounding;
    measured on the default model: same greedy tokens, KL ~1e-6).
    fmt "int8": int8 per-channel weights AND dynamically quantised uint8 activations (lossy: KL 1.2 nats on the
    default model, mostly from the MLP down projection whose input has outlier channels).
    The default CPU format ("blocks": weights as stored) does not go through here: see build_packed_model.
    """
    from concurrent.futures import ThreadPoolExecutor

    del blocks
    targets = pack_targets(model, fmt)
    # packing converts every weight; torch releases the GIL, so pack on all cores (cold start)
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        packed = list(pool.map(lambda t: pack_linear(t[2], fmt), targets))
    for (parent, name, _, _), new in zip(targets, packed, strict=True):
        setattr(parent, name, new)
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(cfg: Any) -> str:
    return (
        f"{cfg.arch}: {cfg.n_layers} layers, d={cfg.hidden_size}, heads {cfg.n_heads}/{cfg.n_kv_heads}, "
        f"vocab {cfg.vocab_size}, rope {cfg.rope_theta:g}"
        + ("" if math.isclose(cfg.rope_scaling, 1.0) else f" x{cfg.rope_scaling:g}")
    )
