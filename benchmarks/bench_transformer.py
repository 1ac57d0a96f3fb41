"""Issue 11's numbers: the cost of transforming a BERT-base-sized model, and what the shipped
policy does to its FLOPs and forward time.

Targets (BERT-base-sized: 12 layers, 768 wide, 12 heads, 3,072 MLP, seq 128, batch 8):
* ``transform`` with trainability scoring (``rules/transformer.yaml``, data given) takes
  <= 15 x one dense training step in time and <= 2 x its peak memory;
* the compressed model's FLOPs and forward time are <= 0.5 x dense (side by side).

Run:  python benchmarks/bench_transformer.py [--layers 12] [--reps 3] [--threads 2]
      [--out docs/benchmarks/transformer.md]

* model: ``transformers.BertForSequenceClassification(BertConfig(...))`` (2 labels), no
  download; a Llama-style ``LlamaForCausalLM`` (same width, 12 layers, 2,048 vocab) for the
  FLOPs / forward part.
* training step: forward + cross-entropy + backward + SGD step on one batch of 8 x 128.
* transform: ``tedepr_fx.transform(model, "rules/transformer.yaml", data=batches)`` with the
  policy's own ``scoring.batches`` batches of 8 x 128 (random token ids, random labels); one
  call, after the timed training steps (a call deep-copies the model).
* peak memory: peak resident set size of a fresh process that builds the model and makes
  that one call (``resource.getrusage``), minus its resident size before the model was
  built: model, gradients and activations for the training step; model, its copy and
  scoring for ``transform``.
* time: that one call (the training step is the process's first, as ``transform`` is).
* forward: ``model(**inputs)`` under ``torch.no_grad()``, dense and compressed interleaved,
  median of ``--reps`` after one warm-up each.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved_samples  # noqa: E402

SEQ, BATCH, WIDTH, HEADS, MLP = 128, 8, 768, 12, 3072
VOCAB = 30522


def bert(layers: int) -> torch.nn.Module:
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        hidden_size=WIDTH, num_hidden_layers=layers, num_attention_heads=HEADS, intermediate_size=MLP,
        vocab_size=VOCAB, num_labels=2))


def llama(layers: int) -> torch.nn.Module:
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=WIDTH, num_hidden_layers=layers, num_attention_heads=HEADS, num_key_value_heads=HEADS,
        intermediate_size=MLP, vocab_size=2048, max_position_embeddings=SEQ))


def batches(n: int, vocab: int = VOCAB) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [({"input_ids": torch.randint(0, vocab, (BATCH, SEQ), generator=g)},
             torch.randint(0, 2, (BATCH,), generator=g)) for _ in range(n)]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(what: str, layers: int) -> dict[str, float]:
    """One measurement in this (fresh) process: ``train`` (one step) or ``transform``."""
    import tedepr_fx

    base = rss_bytes()  # torch and transformers imported, nothing built
    model = bert(layers)
    data = batches(4)
    warnings.simplefilter("ignore")
    if what == "train":
        opt = torch.optim.SGD(model.parameters(), lr=0.01)

        def step() -> None:
            inputs, labels = data[0]
            loss = torch.nn.functional.cross_entropy(model(**inputs).logits, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        t0 = time.perf_counter()
        step()
        seconds = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        out = tedepr_fx.transform(model, ROOT / "rules" / "transformer.yaml", data=data, verbose=False)
        seconds = time.perf_counter() - t0
        del out
    return {"seconds": seconds, "peak_extra_bytes": peak_bytes() - base}


def run_child(what: str, layers: int, threads: int) -> dict[str, float]:
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import torch; "
            f"torch.set_num_threads({threads}); import bench_transformer as b, json; "
            f"print(json.dumps(b.child({what!r}, {layers})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def forward_ratio(name: str, dense: torch.nn.Module, reps: int, vocab: int) -> dict[str, float]:
    import tedepr_fx

    inputs = batches(1, vocab)[0][0]
    warnings.simplefilter("ignore")
    compressed = tedepr_fx.transform(dense, ROOT / "rules" / "transformer.yaml", example_inputs=inputs,
                                     verbose=False)  # without data: the policy's without_data scorer
    dense.eval()
    compressed.eval()
    totals = tedepr_fx.report(compressed).totals
    plan_totals = tedepr_fx.plan(dense, ROOT / "rules" / "transformer.yaml", example_inputs=inputs).totals

    def call(m: torch.nn.Module):  # type: ignore[no-untyped-def]
        return lambda: m(**inputs)
    with torch.no_grad():
        samples = interleaved_samples({"dense": call(dense), "compressed": call(compressed)}, reps, warmup=1)
    dense_s, comp_s = statistics.median(samples["dense"]), statistics.median(samples["compressed"])
    return {"model": name, "flops_before": plan_totals["flops_before"], "flops_after": totals["flops_after"],
            "dense_weights": totals["dense"], "stored": totals["stored"], "kept": totals["kept"],
            "dense_forward_s": dense_s, "compressed_forward_s": comp_s, "time_ratio": comp_s / dense_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "transformer.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()

    train = run_child("train", args.layers, args.threads)
    trans = run_child("transform", args.layers, args.threads)
    forwards = [forward_ratio("BERT-base-sized", bert(args.layers), args.reps, VOCAB),
                forward_ratio("Llama-style", llama(args.layers), args.reps, 2048)]
    load_after = os.getloadavg()

    time_ratio = trans["seconds"] / train["seconds"]
    mem_ratio = trans["peak_extra_bytes"] / max(train["peak_extra_bytes"], 1)
    lines = [
        "# Transformers: cost of `transform`, FLOPs and forward time (issue 11)",
        "",
        f"Measured {datetime.date.today()} on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s), float32; "
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
        f"{time.perf_counter() - started:.0f} s in all.",
        "",
        f"Command: `python benchmarks/bench_transformer.py --layers {args.layers} --reps {args.reps} "
        f"--threads {args.threads}`",
        "",
        f"## `transform` with trainability scoring, BERT-base-sized ({args.layers} layers, {WIDTH} wide, "
        f"seq {SEQ}, batch {BATCH})",
        "",
        "| | time (s) | peak extra memory (MB) |",
        "|---|---|---|",
        f"| one dense training step | {train['seconds']:.2f} | {train['peak_extra_bytes'] / 2**20:.0f} |",
        f"| `transform(model, \"rules/transformer.yaml\", data=...)` | {trans['seconds']:.2f} | "
        f"{trans['peak_extra_bytes'] / 2**20:.0f} |",
        f"| ratio (targets <= 15 x and <= 2 x) | {time_ratio:.1f} x | {mem_ratio:.2f} x |",
        "",
        "Each figure is one call in a fresh process: its time, and its peak resident memory "
        "minus the resident size before the model was built (model, gradients and activations "
        "for the step; model, its copy and scoring for transform).",
        "",
        "## The shipped policy: FLOPs and forward time against dense (seq 128, batch 8, side by side)",
        "",
        "| model | FLOPs dense | FLOPs compressed | ratio | forward dense (s) | compressed (s) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in forwards:
        lines.append(f"| {f['model']} | {f['flops_before'] / 1e9:.1f} G | {f['flops_after'] / 1e9:.1f} G | "
                     f"{f['flops_after'] / f['flops_before']:.2f} | {f['dense_forward_s']:.3f} | "
                     f"{f['compressed_forward_s']:.3f} | {f['time_ratio']:.2f} |")
    lines += ["", "FLOPs are the report's counts of the layers the policy decides (matrix products of "
              "attention scores and softmax are not layers and are not counted); forward times are "
              f"medians of {args.reps} interleaved calls of the whole model.", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
