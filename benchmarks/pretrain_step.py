"""Seconds per training step of the demo Geneformer architecture (6 layers, d_model 64, FFN 128,
batch 16 x 128 tokens, masked-position head) for a given torch thread count.

Usage: python benchmarks/pretrain_step.py THREADS [det|nodet]
(det = torch.use_deterministic_algorithms, as `sccircuits pretrain-demo` runs.)
"""

import sys
import time

import torch
from transformers import BertConfig, BertForMaskedLM

threads, det = int(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "det") == "det"
torch.set_num_threads(threads)
if det:
    torch.use_deterministic_algorithms(True, warn_only=True)
torch.manual_seed(0)
model = BertForMaskedLM(BertConfig(vocab_size=752, hidden_size=64, num_hidden_layers=6, num_attention_heads=4,
                                   intermediate_size=128, max_position_embeddings=128, hidden_act="relu"))
opt = torch.optim.AdamW(model.parameters(), 1e-3)
ids = torch.randint(4, 752, (16, 128))
att = torch.ones_like(ids)
for i in range(6):  # step 0 is warm-up
    if i == 1:
        t0 = time.perf_counter()
    h = model.bert(input_ids=ids, attention_mask=att).last_hidden_state
    loss = torch.nn.functional.cross_entropy(model.cls(h[:, :20].reshape(-1, 64)), ids[:, :20].reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"threads={threads} deterministic={det}: {(time.perf_counter() - t0) / 5:.2f} s/step")
