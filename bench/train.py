"""Training throughput.

First (--parts demo), the demo's own step: experiment=cpu_demo through train.py's module and
trainer, 30 steps with a cold compile cache and 30 with a warm one. Prints the machine's
float32 and bfloat16 matrix-product peak at the model's shapes, the step's share of it (goal: at
least 50%), a torch.profiler breakdown by kind (forward, the LM head and loss, backward, Muon,
AdamW, the data loader, Lightning), and the shares of the budget that validation (goal: at most
5%) and compiling take.

    python bench/train.py --parts demo

Then (--parts loops), side by side in one run on the same model size and batches:

1. a plain PyTorch loop (forward, backward, clip, AdamW step) on fingpt's GPT;
2. the same model trained through Lightning's Trainer with fingpt's GPTLitModule;
3. the plain loop on the same GPT with per-head attention, the layout of Karpathy's char-level
   lecture model ("Let's build GPT"): one Linear per head for each of key, query and value, a
   masked softmax;
4. the LM head and loss alone: fingpt's chunked loss vs F.cross_entropy over full logits.

    python bench/train.py [--steps 30] [--n-embd 384 --n-head 6 --n-layer 6 --block-size 256]
    python bench/train.py --tokenizer char --block-size 8 --batch-size 32   # the lecture model's setting

Prints tokens/s of each and the ratios: Lightning's cost (goal: at most 3%) and fused
scaled_dot_product_attention vs per-head attention (goal: at least 1.5x on CPU).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F

from fingpt.config import compose
from fingpt.data.datamodule import TranscriptDataModule
from fingpt.data.prepare import prepare
from fingpt.lit_module import GPTLitModule
from fingpt.loss import linear_cross_entropy, loss_chunk_rows
from fingpt.model import GPT, CausalSelfAttention, GPTConfig
from fingpt.optim import adamw

ROOT = Path(__file__).resolve().parents[1]
OPTIMIZER = {"lr": 1e-3, "betas": (0.9, 0.95), "weight_decay": 0.1, "fused": True}  # as conf/train.yaml


class Head(nn.Module):
    """One head of the lecture model: its own key, query and value Linear, a masked softmax."""

    def __init__(self, n_embd: int, head_size: int, block_size: int, dropout: float) -> None:
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        B, T, C = x.shape
        k, q = self.key(x), self.query(x)
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        wei = self.dropout(F.softmax(wei, dim=-1))
        return wei @ self.value(x)


class PerHeadAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        size = config.n_embd // config.n_head
        self.heads = nn.ModuleList(
            Head(config.n_embd, size, config.block_size, config.dropout) for _ in range(config.n_head)
        )
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope=None, cache=None):  # the block's call; the GPT-2 layout has no rope
        return self.dropout(self.proj(torch.cat([h(x) for h in self.heads], dim=-1)))


def attention_alone(config: GPTConfig, batch_size: int, steps: int) -> dict[str, float]:
    """Forward + backward tokens/s of one attention layer by itself: fused vs per-head."""
    torch.manual_seed(0)
    x = torch.randn(batch_size, config.block_size, config.n_embd, requires_grad=True)
    layers = {"fused": CausalSelfAttention(config), "per-head": PerHeadAttention(config)}
    steps_of = {name: (lambda layer=layer: layer(x).sum().backward()) for name, layer in layers.items()}
    return best_of_two(steps_of, steps, x.shape[0] * x.shape[1])


def loss_alone(n_embd: int, vocab_size: int, tokens: int, steps: int) -> dict[str, float]:
    """Forward + backward tokens/s of the LM head and its loss by themselves: fingpt's chunked
    loss vs F.cross_entropy over the full (tokens, vocabulary) logits."""
    torch.manual_seed(0)
    h = torch.randn(tokens, n_embd, requires_grad=True)
    weight = (torch.randn(vocab_size, n_embd) * 0.02).requires_grad_()
    targets = torch.randint(0, vocab_size, (tokens,))
    losses = {
        "chunked": lambda: linear_cross_entropy(h, weight, None, targets).backward(),
        "full logits": lambda: F.cross_entropy(h @ weight.T, targets).backward(),
    }
    return best_of_two(losses, steps, tokens)


def best_of_two(steps_of: dict, steps: int, tokens_per_step: int) -> dict[str, float]:
    """Tokens/s of each `steps_of[name]()` (forward + backward), interleaved, best of two."""
    best = dict.fromkeys(steps_of, 0.0)
    for _ in range(2):
        for name, step in steps_of.items():
            step()  # warm up
            start = time.perf_counter()
            for _ in range(steps):
                step()
            best[name] = max(best[name], steps * tokens_per_step / (time.perf_counter() - start))
    return best


def plain_loop(model: GPT, batches: list, warmup: int) -> float:
    """Tokens/s of a hand-written training loop over `batches` (after `warmup` steps)."""
    optimizer = adamw(model, **OPTIMIZER)
    model.train()
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return (len(batches) - warmup) * batches[0][0].numel() / (time.perf_counter() - start)


class Replay:
    """The recorded batches as one loader (Lightning reads a bare list as several loaders)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start = warmup, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.start


def lightning_loop(module: GPTLitModule, batches: list, warmup: int, log_dir: str) -> float:
    """Tokens/s of the same steps through the Trainer, with fingpt's logging of each step."""
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=len(batches),
        limit_val_batches=0,
        gradient_clip_val=1.0,
        logger=L.pytorch.loggers.TensorBoardLogger(log_dir, name="", version=""),
        callbacks=[timer, L.pytorch.callbacks.LearningRateMonitor("step")],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    trainer.fit(module, train_dataloaders=Replay(batches))
    return (len(batches) - warmup) * batches[0][0].numel() / timer.seconds


# --- the demo's step: the machine's peak, the step's share of it, where its time goes ---------


def matmul_peak(config: GPTConfig, tokens: int, dtype: torch.dtype) -> float:
    """GFLOP/s of the model's own matrix products in `dtype`: `tokens` rows through each Linear of
    the blocks, and through the LM head in the loss's chunks of rows; best of three."""
    c, hidden, vocab = config.n_embd, config.mlp_hidden, config.vocab_size
    chunk = loss_chunk_rows(vocab, c, torch.device("cpu"))
    products = [(tokens, c, 3 * c), (tokens, c, c), (tokens, c, hidden), (tokens, hidden, c)] * config.n_layer
    products += [(chunk, c, vocab)] * (tokens // chunk)
    operands = [(torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)) for m, k, n in products]
    flops = sum(2 * m * k * n for m, k, n in products)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for a, b in operands:
            a @ b
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


class RecordFunctions(L.pytorch.profilers.Profiler):
    """Lightning's actions (its hooks, fetching a batch, training_step, backward) as
    torch.profiler ranges of the same names, and the wall seconds of each in `seconds`."""

    def __init__(self) -> None:
        super().__init__()
        self.open, self.seconds = {}, defaultdict(float)

    def start(self, action_name: str) -> None:
        scope = torch.profiler.record_function(action_name)
        self.open[action_name] = (scope.__enter__(), time.perf_counter())

    def stop(self, action_name: str) -> None:
        if (opened := self.open.pop(action_name, None)) is not None:
            scope, start = opened
            scope.__exit__(None, None, None)
            self.seconds[action_name] += time.perf_counter() - start


class StepProfile(L.Callback):
    """Each training step's wall time; torch.profiler over steps [start, start + count)."""

    def __init__(self, start: int, count: int) -> None:
        self.begin, self.count, self.seconds, self.validations = start, count, [], []
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.started = time.perf_counter()
        if batch_idx == self.begin:
            self.profiler.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seconds.append(time.perf_counter() - self.started)
        if batch_idx == self.begin + self.count - 1:
            self.profiler.stop()

    def on_validation_start(self, trainer, pl_module) -> None:
        self.validation_started = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        self.validations.append(time.perf_counter() - self.validation_started)


def labelled(function, label: str):
    def call(*args, **kwargs):
        with torch.profiler.record_function(label):
            return function(*args, **kwargs)

    return call


def demo_step(tmp: str, steps: int, profiled: int) -> dict:
    """The demo's recipe (experiment=cpu_demo, on the committed calls) through train.py's own
    module and trainer for `steps` steps; its step times and a torch.profiler breakdown."""
    from fingpt import model as model_module
    from fingpt.train import build, build_trainer, choose_precision

    cfg = compose(
        "train",
        [
            "experiment=cpu_demo", "data=cc_by_sa", f"paths.data_dir={ROOT / 'tests' / 'corpus'}",
            f"paths.cache_dir={tmp}/cache", f"paths.log_dir={tmp}", f"paths.models_dir={tmp}/models",
            f"+paths.run_dir={tmp}/run", f"trainer.max_steps={steps}", "trainer.max_time=null",
            f"trainer.val_check_interval={steps}",
            "trainer.enable_progress_bar=false", "~callbacks.progress_bar", "~callbacks.best",
            "~callbacks.periodic",
            "export.format=none",
        ],
    )  # fmt: skip
    cfg.paths.output_dir = cfg.paths.run_dir
    choose_precision(cfg)
    module, data = build(cfg)
    trainer = build_trainer(cfg)
    timer = StepProfile(start=steps - profiled, count=profiled)
    trainer.callbacks.append(timer)
    trainer.profiler = RecordFunctions()
    module.model.forward = labelled(module.model.forward, "forward")
    loss = model_module.linear_cross_entropy
    model_module.linear_cross_entropy = labelled(loss, "loss")
    try:
        trainer.fit(module, datamodule=data)
    finally:
        model_module.linear_cross_entropy = loss
    trainer.validate(module, datamodule=data, verbose=False)  # all windows, compiled
    windows = len(data.val_dataloader().dataset)
    return {
        "cfg": cfg, "module": module, "seconds": timer.seconds, "events": timer.profiler.events(),
        "validation_per_window": timer.validations[-1] / windows,
        "before_the_clock": trainer.profiler.seconds[f"[LightningModule]{type(module).__name__}.on_fit_start"],  # noqa: E501
    }  # fmt: skip


def breakdown(events, wall: float) -> dict[str, float]:
    """Seconds of the profiled steps by kind; Lightning is what the named kinds leave of `wall`."""
    total = defaultdict(float)
    for event in events:
        total[event.name] += event.cpu_time_total / 1e6
    kinds = {
        "forward (blocks, embedding)": total["forward"] - total["loss"],
        "LM head and loss (with its gradient)": total["loss"],
        "backward": sum(
            s for name, s in total.items() if name.startswith("[Strategy]") and name.endswith(".backward")
        ),
        "Muon": total["Optimizer.step#Muon.step"],
        "AdamW": total["Optimizer.step#AdamW.step"],
        "data loader": sum(s for name, s in total.items() if name.endswith("train_dataloader_next")),
    }
    kinds["Lightning (hooks, clipping, logging) and the rest"] = wall - sum(kinds.values())
    return kinds


def seconds_of(duration: str) -> float:
    """trainer.max_time's DD:HH:MM:SS in seconds."""
    days, hours, minutes, seconds = (int(part) for part in duration.split(":"))
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def demo_report(steps: int, profiled: int) -> None:
    """The demo step's share of the machine's peak, where its time goes, and the shares of the
    budget spent compiling and validating: printed."""
    demo = compose("train", ["experiment=cpu_demo"])
    budget, every = seconds_of(demo.trainer.max_time), demo.trainer.val_check_interval
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{tmp}/inductor"  # empty: the first run compiles cold
        try:
            cold, warm = demo_step(tmp, steps, profiled), demo_step(tmp, steps, profiled)
        finally:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR")
            if cache is not None:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    cfg, module = warm["cfg"], warm["module"]
    config, batch = module.model.config, cfg.data.loader.batch_size
    tokens = batch * config.block_size
    step = statistics.median(warm["seconds"][1 : steps - profiled])
    muon = next(g for g in module.trainer.optimizers[0].param_groups if "orthogonalizer" in g)
    native = "bfloat16" if str(cfg.trainer.precision).startswith("bf16") else "float32"
    peaks = {name: matmul_peak(config, tokens, getattr(torch, name)) for name in ("float32", "bfloat16")}
    achieved = module.flops_per_batch / step / 1e9
    print(
        f"the demo's step (experiment=cpu_demo: {config.n_embd}/{config.n_head}/{config.n_layer}, "
        f"vocabulary {config.vocab_size}, batch {batch} x {config.block_size}, "
        f"precision {cfg.trainer.precision}, Muon {muon['orthogonalizer']} in "
        f"{module.trainer.optimizers[0].muon.orthogonal_dtype(muon['ns_dtype'], module.device)}), "
        f"{torch.get_num_threads()} CPU threads:"
    )
    print(
        "  matrix products at the model's shapes: "
        + ", ".join(f"{name} {gflops:.0f} GFLOP/s" for name, gflops in peaks.items())
        + f" (bfloat16 is {'native' if native == 'bfloat16' else 'emulated'} here)"
    )
    print(
        f"  a step: {step * 1000:.0f} ms, {tokens / step:.0f} tokens/s, {achieved:.0f} GFLOP/s of the "
        f"model's arithmetic (6N + attention): {achieved / peaks[native]:.0%} of the {native} peak "
        "(goal: 50%)"
    )
    wall = sum(warm["seconds"][steps - profiled :])
    print(
        f"  where a step's time goes (torch.profiler over {profiled} steps, "
        f"{wall / profiled * 1000:.0f} ms each):"
    )
    for kind, seconds in breakdown(warm["events"], wall).items():
        print(f"    {kind:<50} {seconds / profiled * 1000:6.0f} ms {seconds / wall:6.1%}")
    validation = warm["validation_per_window"] * demo.data.loader.val_windows
    print(
        f"  validation every {every} steps on {demo.data.loader.val_windows} windows: "
        f"{validation:.1f} s, {validation / (validation + every * step):.1%} of the training time "
        "(goal: at most 5%)"
    )
    for name, run in (("cold", cold), ("warm", warm)):
        inside = max(0.0, run["seconds"][0] - step)
        print(
            f"  compiling, {name} cache: {run['before_the_clock']:.1f} s before the clock starts, "
            f"{inside:.1f} s inside the {budget:.0f} s budget ({inside / budget:.1%})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--dropout", type=float, default=0.0, help="0: time the kernels, not the RNG")
    parser.add_argument(
        "--tokenizer", choices=["bpe", "char"], default="bpe", help="char: the lecture model's"
    )
    parser.add_argument("--parts", default="demo,loops", help="demo: the demo's step; loops: the comparisons")
    parser.add_argument("--demo-steps", type=int, default=30, help="the demo's steps, the last 10 profiled")
    args = parser.parse_args()
    if "demo" in args.parts:
        demo_report(args.demo_steps, profiled=10)
    if "loops" not in args.parts:
        return

    with tempfile.TemporaryDirectory() as tmp:  # the calls committed in tests/corpus: any clone has them
        overrides = [f"paths.data_dir={ROOT / 'tests' / 'corpus'}", f"tokenizer={args.tokenizer}"]
        cfg = compose("prepare", [*overrides, f"paths.cache_dir={tmp}"])
        prepared = prepare(cfg.data, cfg.tokenizer, cfg.paths.cache_dir)
        manifest = prepared.manifest
        data = TranscriptDataModule(prepared, block_size=args.block_size, batch_size=args.batch_size)
        batches = list(itertools.islice(data.train_dataloader(), args.steps + args.warmup))
        config = dict(
            vocab_size=manifest["vocab_size"], block_size=args.block_size, n_embd=args.n_embd,
            n_head=args.n_head, n_layer=args.n_layer, dropout=args.dropout,
        )  # fmt: skip
        val = manifest["splits"]["validation"]

        def fresh() -> GPT:
            torch.manual_seed(0)
            return GPT(GPTConfig(**config))

        results = {}
        for name in ("plain", "lightning", "plain", "lightning"):  # interleaved: fair to both
            if name == "plain":
                tps = plain_loop(fresh(), batches, args.warmup)
            else:
                module = GPTLitModule(
                    model=config,
                    optimizer={"_target_": "fingpt.optim.adamw", "_partial_": True, **OPTIMIZER},
                    scheduler={
                        "_target_": "fingpt.optim.WarmupCosine",
                        "warmup_steps": 10,
                        "min_lr_ratio": 0.1,
                    },
                    tokens_per_byte=val["tokens"] / val["bytes"],
                    tokenizer=prepared.tokenizer,
                    sample=None,
                )
                tps = lightning_loop(module, batches, args.warmup, tmp)
            results.setdefault(name, []).append(tps)
        per_head = fresh()
        for block in per_head.blocks:
            block.attn = PerHeadAttention(per_head.config)
        results["per-head attention"] = [plain_loop(per_head, batches, args.warmup)]
        alone = attention_alone(GPTConfig(**config), args.batch_size, args.steps)
        loss = loss_alone(args.n_embd, manifest["vocab_size"], args.batch_size * args.block_size, args.steps)

    best = {name: max(values) for name, values in results.items()}
    size = f"{args.n_embd}/{args.n_head}/{args.n_layer}, block {args.block_size}, dropout {args.dropout}"
    threads = torch.get_num_threads()
    print(f"training tokens/s, {threads} CPU threads ({size}, batch {args.batch_size}), best of runs:")
    for name, tps in best.items():
        print(f"  {name:<20} {tps:10.0f}")
    print(f"Lightning's cost: {1 - best['lightning'] / best['plain']:+.1%} (goal: at most 3%)")
    speedup = best["plain"] / best["per-head attention"]
    print(f"fused attention vs per-head attention: {speedup:.2f}x (goal: at least 1.5x)")
    print(
        f"  the attention layer alone, forward + backward: fused {alone['fused']:.0f} tokens/s, "
        f"per-head {alone['per-head']:.0f} = {alone['fused'] / alone['per-head']:.2f}x"
    )
    print(
        f"the LM head and loss alone, forward + backward: chunked {loss['chunked']:.0f} tokens/s, "
        f"F.cross_entropy over full logits {loss['full logits']:.0f} = "
        f"{loss['chunked'] / loss['full logits']:.2f}x"
    )


if __name__ == "__main__":
    main()
