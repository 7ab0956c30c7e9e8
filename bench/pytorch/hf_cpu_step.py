"""Training steps of HuggingFace BERT and T5 in PyTorch on the CPU, at the shapes of lm-train's
bert-mlm-nsp and t5-span-corruption recipes: the anchors of issue 19's comparison.

bert: BertForPreTraining, 4 layers, width 128, 4 heads, FFN 512, vocabulary 2000, batch 16 x 64,
      15% of positions scored by the MLM head, NSP labels, dropout 0.1, AdamW (lr 1e-3, wd 0.01,
      eps 1e-6), grad clip 1.0.
t5:   T5ForConditionalGeneration (v1.0: ReLU FFN, tied embeddings), 3 + 3 layers, width 128,
      4 heads of 32, FFN 512, vocabulary 2000, batch 16, inputs 64, targets 14 (span corruption
      at density 0.15 and mean span 3), dropout 0.1, Adafactor (lr 1e-2, no relative step),
      grad clip 1.0.

Random token ids (the step's cost does not depend on them). Prints the median step time of
--rounds rounds of --steps steps after a warm-up, in f32, on --threads threads.
Run by hand (pip install torch transformers); never by CI.
"""
import argparse
import statistics
import time

import torch
import transformers
from transformers import BertConfig, BertForPreTraining, T5Config, T5ForConditionalGeneration
from transformers.optimization import Adafactor


def bert():
    cfg = BertConfig(vocab_size=2000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=512, max_position_embeddings=64, hidden_dropout_prob=0.1,
                     attention_probs_dropout_prob=0.1)
    model = BertForPreTraining(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, eps=1e-6)
    b, t = 16, 64
    ids = torch.randint(5, 2000, (b, t))
    labels = torch.full((b, t), -100)
    scored = torch.rand(b, t) < 0.15
    labels[scored] = ids[scored]
    tt = torch.zeros(b, t, dtype=torch.long)
    tt[:, t // 2:] = 1
    nsp = torch.randint(0, 2, (b,))

    def loss():
        return model(input_ids=ids, token_type_ids=tt, labels=labels, next_sentence_label=nsp).loss

    return model, opt, loss


def t5():
    cfg = T5Config(vocab_size=2000, d_model=128, d_kv=32, d_ff=512, num_layers=3,
                   num_decoder_layers=3, num_heads=4, dropout_rate=0.1, feed_forward_proj="relu",
                   tie_word_embeddings=True, decoder_start_token_id=0)
    model = T5ForConditionalGeneration(cfg)
    opt = Adafactor(model.parameters(), lr=1e-2, relative_step=False, scale_parameter=False,
                    warmup_init=False)
    b = 16
    ids = torch.randint(5, 2000, (b, 64))
    labels = torch.randint(5, 2000, (b, 14))

    def loss():
        return model(input_ids=ids, labels=labels).loss

    return model, opt, loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=["bert", "t5"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, opt, loss = {"bert": bert, "t5": t5}[a.model]()
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        l = loss()
        l.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(a.rounds):
        s = time.perf_counter()
        for _ in range(a.steps):
            step()
        times.append((time.perf_counter() - s) / a.steps)
    print(f"{a.model}: PyTorch {torch.__version__}, transformers {transformers.__version__}, "
          f"{a.threads} threads: median {statistics.median(times) * 1e3:.1f} ms/step "
          f"(rounds {', '.join(f'{x * 1e3:.1f}' for x in times)})")


if __name__ == "__main__":
    main()
