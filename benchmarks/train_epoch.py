"""One training epoch of the MNIST Neural ODE classifier and of its 6-block ResNet twin, side
by side in one run.

Prints, per model: epoch time, NFE per forward (and backward) pass, test accuracy, parameters,
and how a training step's time splits between the convolutional stem, the middle (ODE block or
residual blocks) and the head. The ODE classifier runs on the native engine and, for reference,
on torchdiffeq.

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


def train_one_epoch(model, train, batch_size, device, max_batches=None):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    nfe_f = nfe_b = steps = 0
    sync(device)
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(batches(train, batch_size, gen, drop_last=True)):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        s = neuralode.solve_stats(model)
        nfe_f += s.nfe_forward
        nfe_b += s.nfe_backward
        steps += 1
    sync(device)
    return time.perf_counter() - t0, nfe_f / steps, nfe_b / steps


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
        "--no-allocator-tuning",
        action="store_true",
        help="keep glibc's default malloc thresholds (the CLI raises them)",
    )
    args = p.parse_args()
    tuned = False if args.no_allocator_tuning else tune_allocator()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    train, test = load_mnist(args.data_dir)
    configs = [
        ("neural ODE (native)", "ode", {"backend": "native"}),
        ("ResNet, 6 blocks", "resnet", {"num_blocks": 6}),
    ]
    if not args.skip_torchdiffeq:
        configs.append(("neural ODE (torchdiffeq)", "ode", {"backend": "torchdiffeq"}))
    name_w = max(len(c[0]) for c in configs)
    print(
        f"MNIST, one epoch, batch {args.batch_size}, Adam 1e-3, {device}, "
        f"{args.threads} thread(s), torch {torch.__version__}, allocator tuning "
        f"{'on' if tuned else 'off'}"
    )
    print(
        f"{'model':<{name_w}} {'epoch s':>8} {'NFE f/b':>10} {'test acc':>9} {'params':>8} "
        f"{'stem/middle/head':>18}"
    )
    results = {}
    for _label, name, kw in configs:  # warm-up: threads, allocator, kernels
        train_one_epoch(
            neuralode.create_model(name, **kw).to(device),
            train,
            args.batch_size,
            device,
            max_batches=5,
        )
    for label, name, kw in configs:
        torch.manual_seed(0)
        model = neuralode.create_model(name, **kw).to(device)
        secs, nf, nb = train_one_epoch(model, train, args.batch_size, device, args.max_batches)
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
    print(f"\nneural ODE (native) epoch / ResNet epoch: {ratio:.2f}")
    if "neural ODE (torchdiffeq)" in results:
        r2 = results["neural ODE (torchdiffeq)"] / results["ResNet, 6 blocks"]
        print(f"neural ODE (torchdiffeq) epoch / ResNet epoch: {r2:.2f}")


if __name__ == "__main__":
    main()
