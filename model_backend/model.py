"""The transformer: llama / qwen2 / starcoder2 with a static, slot-organised KV cache.

gpt-fast style: plain modules, one forward. The architecture differences are data (the ModelConfig
flags: norm type, MLP type, which linears carry a bias), not subclasses.

KV cache layout: one tensor per K and V of shape [n_layers, n_slots, n_kv_heads, max_seq, head_dim].
A *slot* holds one sequence. A batched forward takes, for every row, the slot it writes to and the
positions of its tokens, so rows at different positions decode together (per-row RoPE and masks).
The cache is allocated uninitialised (pages are only touched when used) and zeroed lazily, per slot, up
to the highest position any forward may read: stale-but-finite values are masked, never NaN * 0.

Weights are stored fused (q|k|v in one Linear, gate|up in one Linear) so a decode step runs few ops.
On CUDA weights are bf16/fp16 with norms in fp32 (SDPA keeps its softmax in fp32); on CPU fp32, with an
optional int8 path (`quantize_int8`: fbgemm dynamic int8 Linear, 4x fewer weight bytes per token).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # the real class lives in weights.py; the model only reads attributes
    from model_backend.weights import ModelConfig


class Norm(nn.Module):
    """RMSNorm or LayerNorm (with bias), computed in fp32 whatever the activation dtype."""

    def __init__(self, dim: int, eps: float, kind: str) -> None:
        super().__init__()
        self.kind, self.eps = kind, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if kind == "layernorm" else None

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        xf = x.float()
        if self.kind == "layernorm":
            out = F.layer_norm(xf, (xf.shape[-1],), self.weight, self.bias, self.eps)
        else:
            out = F.rms_norm(xf, (xf.shape[-1],), self.weight, self.eps)
        return out.to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        qkv_out = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
        self.wqkv = nn.Linear(cfg.hidden_size, qkv_out, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.hidden_size, bias=cfg.out_bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, cache: tuple[Tensor, Tensor],
                rows: Tensor, pos: Tensor, read: slice | Tensor, kv_len: int) -> Tensor:
        b, t, _ = x.shape
        hd = self.head_dim
        q, k, v = self.wqkv(x).split([self.n_heads * hd, self.n_kv * hd, self.n_kv * hd], dim=-1)
        q = apply_rope(q.view(b, t, self.n_heads, hd), cos, sin)
        k = apply_rope(k.view(b, t, self.n_kv, hd), cos, sin)
        v = v.view(b, t, self.n_kv, hd)
        k_cache, v_cache = cache
        # write: advanced indices on dims 0 and 2 -> the value is laid out [b, t, heads, hd]
        k_cache[rows, :, pos] = k.to(k_cache.dtype)
        v_cache[rows, :, pos] = v.to(v_cache.dtype)
        keys = k_cache[read, :, :kv_len]
        values = v_cache[read, :, :kv_len]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask,
                                             enable_gqa=self.n_heads != self.n_kv)
        return self.wo(out.transpose(1, 2).reshape(b, t, self.n_heads * hd))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.kind = cfg.mlp_type
        inter = cfg.intermediate_size
        if self.kind == "swiglu":
            self.w_in = nn.Linear(cfg.hidden_size, 2 * inter, bias=cfg.mlp_bias)  # gate | up
        else:
            self.w_in = nn.Linear(cfg.hidden_size, inter, bias=cfg.mlp_bias)  # c_fc
        self.w_out = nn.Linear(inter, cfg.hidden_size, bias=cfg.mlp_bias)  # down / c_proj

    def forward(self, x: Tensor) -> Tensor:
        h = self.w_in(x)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")
        return self.w_out(h)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = Norm(cfg.hidden_size, cfg.norm_eps, cfg.norm_type)
        self.attn = Attention(cfg)
        self.ffn_norm = Norm(cfg.hidden_size, cfg.norm_eps, cfg.norm_type)
        self.mlp = MLP(cfg)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [b, t, heads, hd]; cos/sin: [b, t, 1, hd] (HF's rotate-half convention)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def rope_tables(head_dim: int, max_seq: int, theta: float, scaling: float,
                device: torch.device) -> tuple[Tensor, Tensor]:
    """cos/sin [max_seq, head_dim] in fp32; linear scaling divides positions by `scaling`."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim))
    t = torch.arange(max_seq, dtype=torch.float64, device=device) / scaling
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().float(), emb.sin().float()


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = Norm(cfg.hidden_size, cfg.norm_eps, cfg.norm_type)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.k_cache: Tensor | None = None
        self.v_cache: Tensor | None = None
        self.cos: Tensor | None = None
        self.sin: Tensor | None = None
        self.n_slots = 0
        self.max_seq = 0
        self._zeroed: list[int] = []  # per slot: positions [0, zeroed) hold finite values

    # -- setup ---------------------------------------------------------------------------------------
    def setup_caches(self, n_slots: int, max_seq: int, *, rope_theta: float | None = None,
                     rope_scaling: float | None = None, dtype: torch.dtype | None = None) -> None:
        cfg = self.config
        device = self.embed.weight.device
        dtype = dtype or self.embed.weight.dtype
        shape = (cfg.n_layers, n_slots, cfg.n_kv_heads, max_seq, cfg.head_dim)
        # uninitialised on purpose: zeroed lazily per slot (see ensure_zeroed), so unused pages cost nothing
        self.k_cache = torch.empty(shape, dtype=dtype, device=device)
        self.v_cache = torch.empty(shape, dtype=dtype, device=device)
        theta = rope_theta if rope_theta is not None else cfg.rope_theta
        scaling = rope_scaling if rope_scaling is not None else cfg.rope_scaling
        self.cos, self.sin = rope_tables(cfg.head_dim, max_seq, theta, scaling, device)
        self.n_slots, self.max_seq = n_slots, max_seq
        self._zeroed = [0] * n_slots

    def ensure_zeroed(self, slots: Sequence[int], upto: int) -> None:
        assert self.k_cache is not None and self.v_cache is not None
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
        self.k_cache[:, dst, :, :length] = self.k_cache[:, src, :, :length]
        self.v_cache[:, dst, :, :length] = self.v_cache[:, src, :, :length]
        self._zeroed[dst] = max(self._zeroed[dst], length)

    def reorder_slots(self, src: Sequence[int], dst: Sequence[int], length: int) -> None:
        """dst[i] <- src[i] for all i at once (beam search), first `length` positions."""
        assert self.k_cache is not None and self.v_cache is not None
        if list(src) == list(dst) or length <= 0:
            return
        s = torch.tensor(list(src), device=self.k_cache.device)
        d = torch.tensor(list(dst), device=self.k_cache.device)
        self.k_cache[:, d, :, :length] = self.k_cache[:, s, :, :length].clone()
        self.v_cache[:, d, :, :length] = self.v_cache[:, s, :, :length].clone()
        for x in dst:
            self._zeroed[x] = max(self._zeroed[x], length)

    # -- forward -------------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, tokens: Tensor, start_pos: Sequence[int], slots: Sequence[int], *,
                all_logits: bool = False) -> Tensor:
        """tokens [b, t]; row i holds t new tokens at positions start_pos[i].. of cache slot slots[i].

        Returns fp32 logits [b, t, vocab] (all_logits) or [b, vocab] for each row's last token.
        """
        assert self.k_cache is not None and self.v_cache is not None and self.cos is not None
        assert self.sin is not None
        b, t = tokens.shape
        device = tokens.device
        kv_len = max(start_pos) + t
        if kv_len > self.max_seq:
            raise ValueError(f"sequence of {kv_len} tokens exceeds the KV cache length {self.max_seq}")
        self.ensure_zeroed(slots, kv_len)
        pos = torch.tensor(list(start_pos), device=device).unsqueeze(1) + torch.arange(t, device=device)
        rows = torch.tensor(list(slots), device=device).unsqueeze(1)
        s0 = slots[0]
        read: slice | Tensor = (slice(s0, s0 + b) if list(slots) == list(range(s0, s0 + b))
                                else rows.squeeze(1))
        # row i, query j may attend to key positions <= pos[i, j]
        mask = (torch.arange(kv_len, device=device).view(1, 1, kv_len) <= pos.unsqueeze(-1)).unsqueeze(1)
        cos = self.cos[pos].unsqueeze(2)
        sin = self.sin[pos].unsqueeze(2)
        x = self.embed(tokens)
        dtype = x.dtype
        cos, sin = cos.to(dtype), sin.to(dtype)
        for i, layer in enumerate(self.layers):
            x = x + layer.attn(layer.attn_norm(x), cos, sin, mask, (self.k_cache[i], self.v_cache[i]),
                               rows, pos, read, kv_len)
            x = x + layer.mlp(layer.ffn_norm(x))
        if not all_logits:
            x = x[:, -1]
        return self.lm_head(self.norm(x)).float()


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
        sd[o + "attn.wqkv.weight"] = torch.cat([get(att + f"{n}_proj.weight") for n in "qkv"])
        if cfg.qkv_bias:
            sd[o + "attn.wqkv.bias"] = torch.cat([get(att + f"{n}_proj.bias") for n in "qkv"])
        sd[o + "attn.wo.weight"] = get(att + "o_proj.weight")
        if cfg.out_bias:
            sd[o + "attn.wo.bias"] = get(att + "o_proj.bias")
        if cfg.mlp_type == "swiglu":
            sd[o + "mlp.w_in.weight"] = torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")])
            sd[o + "mlp.w_out.weight"] = get(p + "mlp.down_proj.weight")
            if cfg.mlp_bias:
                sd[o + "mlp.w_in.bias"] = torch.cat([get(p + "mlp.gate_proj.bias"), get(p + "mlp.up_proj.bias")])
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


def build_model(cfg: ModelConfig, tensors: dict[str, Tensor], *, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> Transformer:
    """A Transformer holding the checkpoint's weights in `dtype` (norm weights stay fp32)."""
    device = torch.device(device)
    with torch.device("meta"):
        model = Transformer(cfg)
    sd = fused_state_dict(cfg, tensors)
    ready: dict[str, Tensor] = {}
    for name, tensor in sd.items():
        want = torch.float32 if "norm" in name else dtype
        ready[name] = tensor.to(device=device, dtype=want).contiguous()
    model.load_state_dict(ready, assign=True, strict=True)
    if sd["lm_head.weight"] is sd["embed.weight"]:
        model.lm_head.weight = model.embed.weight  # tied: one tensor, not two copies
    return model.eval().requires_grad_(False)


def quantize_int8(model: Transformer) -> Transformer:
    """CPU: replace every Linear (incl. lm_head) by fbgemm's dynamic int8 Linear, per-channel weights.

    Decoding is bound by weight traffic; int8 weights read 4x fewer bytes than fp32. The embedding
    table stays fp32 (a lookup reads one row).
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if "fbgemm" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "fbgemm"
    if model.lm_head.weight is model.embed.weight:
        model.lm_head.weight = nn.Parameter(model.embed.weight.detach().clone(), requires_grad=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(cfg: Any) -> str:
    return (f"{cfg.arch}: {cfg.n_layers} layers, d={cfg.hidden_size}, heads {cfg.n_heads}/{cfg.n_kv_heads}, "
            f"vocab {cfg.vocab_size}, rope {cfg.rope_theta:g}" + ("" if math.isclose(cfg.rope_scaling, 1.0)
                                                                  else f" x{cfg.rope_scaling:g}"))
