#!/usr/bin/env python3
"""Independent float64 reference forward pass for the golden test (issue 3 point 7).

What: teacher-forces llama.cpp's greedy continuations (`tests/golden_data/*-greedy.jsonl`)
through a float64 implementation of the `llama` and `qwen2` architectures, and writes,
for every generated position, the f64 argmax, the f64 top-1 minus top-2 logit gap, the
8 best (id, logit) pairs and the f64 logit of llama.cpp's token. `tests/golden.rs`
compares the Rust reference engine's exact-f32 argmax and llama.cpp's tokens with it.

Why: llama.cpp rounds activations to 8 bits before quantized matmuls and keeps the KV
cache in f16; our engine computes in f32. Where the two disagree, a third computation
with far smaller rounding error says which one is closer to the exact result of the
quantized model (the weights *are* the dequantized blocks, so f64 arithmetic on them is
the exact model up to ~1e-16 relative per operation).

Independence: numpy for the arithmetic and gguf-py (`pip install gguf`, the GGUF
reader and block dequantizers maintained in the llama.cpp repository) for reading the
file and dequantizing blocks to f32 with the formulas of ggml's reference dequantizers
(those f32 values *are* the quantized model's weights; all later arithmetic is f64). It shares
no code with the Rust crate: metadata parsing, dequantization, RoPE, attention, norms
and the FFN are written here from the architecture definitions.

Conventions (the same as llama.cpp's and, checked, the Rust engine's
`src/model/arch/mod.rs` `base_config` (rope_style) and `src/engine/cpu/ops.rs` `rope`):
- llama: RoPE over adjacent pairs (x[2i], x[2i+1]) (ggml rope mode 0; the GGUF
  converter permutes the Q/K rows so that this pairing is right), no biases.
- qwen2: RoPE over halves (x[i], x[i+d/2]) (NEOX, ggml mode 2), Q/K/V biases.
- angle of pair i at position p: p * base^(-2i/head_dim), base = `<arch>.rope.freq_base`.
- RMSNorm eps = `<arch>.attention.layer_norm_rms_epsilon`; attention scale 1/sqrt(head_dim);
  grouped-query attention (query head h reads KV head h // (n_heads / n_kv_heads));
  SwiGLU FFN silu(gate) * up; output = `output.weight`, or `token_embd.weight` when absent.

Rerun (from the repository root; a venv with numpy and gguf, e.g.
`python3 -m venv /tmp/rvenv && /tmp/rvenv/bin/pip install gguf==0.19.0 numpy`):

    OPENBLAS_NUM_THREADS=2 /tmp/rvenv/bin/python tools/reference_f64.py \
        /work/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        tests/golden_data/smol-greedy.jsonl tests/golden_data/smol-f64.jsonl
    OPENBLAS_NUM_THREADS=2 /tmp/rvenv/bin/python tools/reference_f64.py \
        /work/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
        tests/golden_data/qwen-greedy.jsonl tests/golden_data/qwen-f64.jsonl

Output: one JSON line per golden case, in the same order: `tool`, `tool_version`,
`model_file`, `model_sha256`, `prompt_tokens`, `greedy_tokens` (copied so the test can
check it reads the matching case), and per generated position i (the logits after
prompt_tokens + greedy_tokens[:i]): `argmax`, `gap`, `top_ids`, `top_logits`,
`golden_logit` (f64 logit of llama.cpp's token greedy_tokens[i]).
"""

import hashlib
import json
import os
import sys
import time

import numpy as np
import gguf

TOOL_VERSION = "1"
TOP_N = 8


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


class Model:
    def __init__(self, path):
        self.r = gguf.GGUFReader(path)
        self.tensors = {t.name: t for t in self.r.tensors}
        arch = self.meta("general.architecture")
        if arch not in ("llama", "qwen2"):
            sys.exit(f"architecture {arch!r} is not supported (llama, qwen2)")
        self.arch = arch
        m = lambda k, d=None: self.meta(f"{arch}.{k}", d)  # noqa: E731
        self.n_layers = int(m("block_count"))
        self.d = int(m("embedding_length"))
        self.n_heads = int(m("attention.head_count"))
        self.n_kv = int(m("attention.head_count_kv", self.n_heads))
        self.hd = int(m("attention.key_length", self.d // self.n_heads))
        self.ffn = int(m("feed_forward_length"))
        self.rope_base = float(m("rope.freq_base", 10000.0 if arch == "llama" else 1e6))
        self.eps = float(m("attention.layer_norm_rms_epsilon", 1e-5))
        scaling = self.meta(f"{arch}.rope.scaling.type", "none")
        if scaling != "none" or "rope_freqs.weight" in self.tensors:
            sys.exit("scaled RoPE is not implemented here")
        if int(m("rope.dimension_count", self.hd)) != self.hd:
            sys.exit("partial RoPE is not implemented here")
        self.neox = arch == "qwen2"

    def meta(self, key, default=None):
        f = self.r.fields.get(key)
        return default if f is None else f.contents()

    def w(self, name):
        """Dequantized tensor as float64, numpy shape (rows, cols) = ggml (ne1, ne0)."""
        t = self.tensors[name]
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        ne = [int(x) for x in t.shape]
        return a.reshape(list(reversed(ne))) if len(ne) > 1 else a.reshape(ne)

    def has(self, name):
        return name in self.tensors


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, base, neox):
    """x: (n_tok, n_heads, hd); rotate pair i by pos * base^(-2i/hd)."""
    hd = x.shape[-1]
    half = hd // 2
    inv = base ** (-2.0 * np.arange(half, dtype=np.float64) / hd)
    ang = pos[:, None].astype(np.float64) * inv[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    if neox:
        a, b = x[..., :half], x[..., half:]
    else:
        a, b = x[..., 0::2], x[..., 1::2]
    ra, rb = a * c - b * s, a * s + b * c
    out = np.empty_like(x)
    if neox:
        out[..., :half], out[..., half:] = ra, rb
    else:
        out[..., 0::2], out[..., 1::2] = ra, rb
    return out


def attention(q, k, v, n_heads, n_kv):
    """Causal GQA over one sequence. q: (n, H, hd); k, v: (n, KV, hd)."""
    n, _, hd = q.shape
    group = n_heads // n_kv
    kk = np.repeat(k, group, axis=1)  # query head h -> kv head h // group
    vv = np.repeat(v, group, axis=1)
    s = np.einsum("ihd,jhd->hij", q, kk) / np.sqrt(hd)
    s = np.where(np.tril(np.ones((n, n), dtype=bool))[None], s, -np.inf)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    s /= s.sum(axis=-1, keepdims=True)
    return np.einsum("hij,jhd->ihd", s, vv).reshape(n, n_heads * hd)


def forward(m, seqs):
    """Logits (f64) of every position of every sequence; layer-outer so each
    weight matrix is dequantized once for all sequences."""
    emb = m.w("token_embd.weight")
    xs = [emb[np.asarray(s)] for s in seqs]
    spans, off = [], 0
    for s in seqs:
        spans.append((off, off + len(s)))
        off += len(s)
    x = np.concatenate(xs, axis=0)
    pos = np.concatenate([np.arange(len(s)) for s in seqs])
    H, KV, hd = m.n_heads, m.n_kv, m.hd
    for li in range(m.n_layers):
        p = f"blk.{li}."
        h = rmsnorm(x, m.w(p + "attn_norm.weight"), m.eps)
        q, k, v = (h @ m.w(p + f"attn_{n}.weight").T for n in "qkv")
        for name, arr in (("q", q), ("k", k), ("v", v)):
            if m.has(p + f"attn_{name}.bias"):
                arr += m.w(p + f"attn_{name}.bias")
        q = rope(q.reshape(-1, H, hd), pos, m.rope_base, m.neox)
        k = rope(k.reshape(-1, KV, hd), pos, m.rope_base, m.neox)
        v = v.reshape(-1, KV, hd)
        att = np.concatenate(
            [attention(q[a:b], k[a:b], v[a:b], H, KV) for a, b in spans], axis=0
        )
        x = x + att @ m.w(p + "attn_output.weight").T
        h = rmsnorm(x, m.w(p + "ffn_norm.weight"), m.eps)
        g = h @ m.w(p + "ffn_gate.weight").T
        u = h @ m.w(p + "ffn_up.weight").T
        x = x + ((g / (1.0 + np.exp(-g))) * u) @ m.w(p + "ffn_down.weight").T
    x = rmsnorm(x, m.w("output_norm.weight"), m.eps)
    out = m.w("output.weight") if m.has("output.weight") else emb
    del emb
    logits = x @ out.T
    return [logits[a:b] for a, b in spans]


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: reference_f64.py MODEL.gguf GOLDEN-greedy.jsonl OUT-f64.jsonl")
    model_path, golden_path, out_path = sys.argv[1:]
    t0 = time.time()
    digest = sha256_file(model_path)
    cases = [json.loads(l) for l in open(golden_path) if l.strip()]
    for c in cases:
        if c.get("model_sha256") not in (None, digest):
            sys.exit(f"{model_path} has sha256 {digest}, the golden file was made with {c['model_sha256']}")
    m = Model(model_path)
    seqs = [c["prompt_tokens"] + c["greedy_tokens"][:-1] for c in cases]
    all_logits = forward(m, seqs)
    agree = total = 0
    with open(out_path, "w") as out:
        for ci, (c, lg) in enumerate(zip(cases, all_logits)):
            p, g = len(c["prompt_tokens"]), c["greedy_tokens"]
            rec = {
                "tool": "tools/reference_f64.py",
                "tool_version": TOOL_VERSION,
                "numpy": np.__version__,
                "model_file": os.path.basename(model_path),
                "model_sha256": digest,
                "prompt_tokens": c["prompt_tokens"],
                "greedy_tokens": g,
                "argmax": [], "gap": [], "top_ids": [], "top_logits": [], "golden_logit": [],
            }
            for i in range(len(g)):
                row = lg[p - 1 + i]
                top = np.argsort(-row, kind="stable")[:TOP_N]
                rec["argmax"].append(int(top[0]))
                rec["gap"].append(float(row[top[0]] - row[top[1]]))
                rec["top_ids"].append([int(t) for t in top])
                rec["top_logits"].append([float(row[t]) for t in top])
                rec["golden_logit"].append(float(row[g[i]]))
                total += 1
                if top[0] == g[i]:
                    agree += 1
                else:
                    print(f"case {ci} pos {i}: f64 {top[0]} vs llama.cpp {g[i]}; f64 gap "
                          f"{row[top[0]] - row[top[1]]:.4f}, f64 margin over llama.cpp's token "
                          f"{row[top[0]] - row[g[i]]:.4f}, llama.cpp gap {c['top1_minus_top2_logit'][i]:.4f}")
            out.write(json.dumps(rec) + "\n")
    print(f"{os.path.basename(model_path)}: f64 vs llama.cpp {agree}/{total}; "
          f"{time.time() - t0:.1f}s; wrote {out_path}")


if __name__ == "__main__":
    main()
