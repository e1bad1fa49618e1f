"""One training epoch of the MNIST Neural ODE classifier and of its 6-block ResNet twin, side
by side in one run.

Prints, per model: epoch time, NFE per forward (and backward) pass, test accuracy, parameters,
and how a training step's time splits between the convolutional stem, the middle (ODE block or
residual blocks) and the head. The ODE classifier runs on the native engine and, for reference,
on torchdiffeq. The models (the tutorial's, ``--models ode-strided,resnet-strided`` for the
earlier ones) train *interleaved*: every batch is a step of each model in turn, in an order
that alternates from batch to batch, and each model's epoch time is the sum of its own steps,
so that load from a noisy neighbour lands on all of them alike.

    python benchmarks/train_epoch.py --data-dir ../shared/data [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

import neuralode
from neuralode.data import batches, load_mnist
from neuralode.training.allocator import tune_allocator


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_interleaved(models, train, batch_size, device, max_batches=None):
    """One epoch of every model on the same batches, a step of each in turn (the order
    alternating from batch to batch); returns each model's summed step time and mean NFE."""
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]
    gen = torch.Generator().manual_seed(0)
    for m in models:
        m.train()
    n = len(models)
    secs, nfe_f, nfe_b = [0.0] * n, [0] * n, [0] * n
    steps = 0
    for i, (x, y) in enumerate(batches(train, batch_size, gen, drop_last=True)):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        order = range(n) if i % 2 == 0 else reversed(range(n))
        for k in order:
            model, opt = models[k], opts[k]
            sync(device)
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync(device)
            secs[k] += time.perf_counter() - t0
            s = neuralode.solve_stats(model)
            nfe_f[k] += s.nfe_forward
            nfe_b[k] += s.nfe_backward
        steps += 1
    return [(secs[k], nfe_f[k] / steps, nfe_b[k] / steps) for k in range(n)]


@torch.no_grad()
def accuracy(model, test, device):
    model.eval()
    correct = 0
    for x, y in batches(test, 1000, None):
        correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
    model.train()
    return correct / len(test)


def split(model, x, y, device, repeats=20):
    """Median forward+backward time of stem, middle and head on one batch."""
    middle = model.ode if hasattr(model, "ode") else model.blocks
    parts = {"stem": model.stem, "middle": middle, "head": model.head}
    with torch.no_grad():
        feats = {"stem": x, "middle": model.stem(x)}
        mid = middle(feats["middle"])
        feats["head"] = mid[0] if isinstance(mid, tuple) else mid
    out = {}
    for name, module in parts.items():
        inp = feats[name].detach().requires_grad_(name != "stem")
        times = []
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            r = module(inp)
            r = r[0] if isinstance(r, tuple) else r
            (F.cross_entropy(r, y) if name == "head" else r.pow(2).mean()).backward()
            sync(device)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    total = sum(out.values())
    return {k: v / total for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-batches", type=int, default=None, help="shorter epochs, for a quick look")
    p.add_argument("--skip-torchdiffeq", action="store_true")
    p.add_argument(
        "--models",
        default="ode,resnet",
        help="the ODE model and its ResNet twin, by registry name (default: the tutorial's)",
    )
    p.add_argument(
        "--no-allocator-tuning",
        action="store_true",
        help="keep glibc's default malloc thresholds (the CLI raises them)",
    )
    args = p.parse_args()
    tuned = False if args.no_allocator_tuning else tune_allocator()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    train, test = load_mnist(args.data_dir)
    ode_name, resnet_name = args.models.split(",")
    configs = [
        ("neural ODE (native)", ode_name, {"backend": "native"}),
        ("ResNet, 6 blocks", resnet_name, {"num_blocks": 6}),
    ]
    if not args.skip_torchdiffeq:
        configs.append(("neural ODE (torchdiffeq)", ode_name, {"backend": "torchdiffeq"}))
    name_w = max(len(c[0]) for c in configs)
    print(
        f"MNIST, one epoch, batch {args.batch_size}, Adam 1e-3, {device}, "
        f"{args.threads} thread(s), torch {torch.__version__}, allocator tuning "
        f"{'on' if tuned else 'off'}, models {args.models}, interleaved"
    )
    print(
        f"{'model':<{name_w}} {'epoch s':>8} {'NFE f/b':>10} {'test acc':>9} {'params':>8} "
        f"{'stem/middle/head':>18}"
    )

    def build():
        out = []
        for _label, name, kw in configs:
            torch.manual_seed(0)
            out.append(neuralode.create_model(name, **kw).to(device))
        return out

    train_interleaved(build(), train, args.batch_size, device, max_batches=5)  # warm-up
    models = build()
    timings = train_interleaved(models, train, args.batch_size, device, args.max_batches)
    results = {}
    for (label, _name, _kw), model, (secs, nf, nb) in zip(configs, models, timings, strict=True):
        acc = accuracy(model, test, device)
        x, y = train.x[: args.batch_size].to(device), train.y[: args.batch_size].to(device)
        sp = split(model, x, y, device)
        params = sum(q.numel() for q in model.parameters())
        results[label] = secs
        print(
            f"{label:<{name_w}} {secs:>8.1f} {nf:>5.1f}/{nb:<4.1f} {acc:>9.4f} {params:>8} "
            f"{sp['stem']:>6.0%}/{sp['middle']:.0%}/{sp['head']:.0%}"
        )
    ratio = results["neural ODE (native)"] / results["ResNet, 6 blocks"]
    print(f"\nneural ODE (native) epoch / ResNet epoch: {ratio:.3f}")
    print(f"goal ≤ 1.10× the ResNet's epoch: {'met' if ratio <= 1.10 else 'NOT met'}")
    if "neural ODE (torchdiffeq)" in results:
        r2 = results["neural ODE (torchdiffeq)"] / results["ResNet, 6 blocks"]
        print(f"neural ODE (torchdiffeq) epoch / ResNet epoch: {r2:.3f}")


if __name__ == "__main__":
    main()
