"""The same 2-D flow trained by neuralode and by its peers, per training iteration, side by
side in one process.

The model is the density task's (``neuralode train density``): one CNF block with an MLP 64×3
on the state and Fourier time features (``--dynamics concatsquash``: FFJORD's concat-squash MLP,
tanh), exact trace, dopri5 from t = 0 to 0.5 at rtol = atol = 1e-5.
zuko trains the same network (the same initial weights) through its free-form Jacobian
transform (``zuko.transforms.FreeFormJacobianTransform``: exact trace by one batched
vector-Jacobian product, gradients by its adaptive checkpoint adjoint); neuralode on its native
engine (direct backpropagation; and the checkpointed discrete adjoint, the counterpart of
zuko's gradient) and on the torchdiffeq backend. All see the same batches of 8 Gaussians (512
samples), from the same weights: the model after ``--pretrain`` iterations, so that the
dynamics have the shape (and the NFE) of a flow in training. Every competitor trains its own
copy; repeats alternate the order.

Per iteration it prints the median time, the NFE of the dynamics network (calls in the forward
solve; calls in the backward pass), and the ratios: raw, and at equal NFE (time per forward
evaluation), since the solvers' error control differs slightly (zuko scales the trace state by
1e-2). The last row, "bare", is the floor no engine can beat: the same number of evaluations of
the dynamics with their exact trace, and the backward pass through them, with no solver at all.

    pip install zuko    # (or: pip install -e ".[bench]")
    python benchmarks/density_peers.py [--repeats 8] [--chunk 5] [--pretrain 300]

torchdyn (its CNF) is included when it imports; with torch 2.13.0 it does not (see
docs/benchmarks.md).
Goal (issue 14): ≥ 2× zuko and ≥ 2× the same flow on the torchdiffeq backend.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
from density_common import build, table, train_step
from torch import nn

from neuralode.flows import standard_normal_log_prob
from neuralode.toy_densities import get_toy

warnings.filterwarnings("ignore")


class Counter:
    """Counts the calls of a module (a forward hook)."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *args) -> None:
        self.calls += 1


def _nll(model: nn.Module):
    return lambda x: -model(x).mean()


def competitors(pretrain: int, batch: int, dynamics: str = "fourier"):
    from zuko.transforms import FreeFormJacobianTransform

    torch.manual_seed(0)
    model, _ = build("8gaussians", dynamics=dynamics)
    if pretrain:  # start all from a flow that has taken shape, as in the middle of training
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(1)
        for _ in range(pretrain):
            train_step(model, opt, get_toy("8gaussians").sample(batch, gen))
    cnf = model.flow.layers[0]
    out = {}
    for label, kw in (
        ("neuralode (direct)", {}),
        ("neuralode (checkpoint)", {"gradient": "checkpoint"}),
        ("neuralode on torchdiffeq", {"backend": "torchdiffeq"}),
    ):
        m = copy.deepcopy(model)
        layer = m.flow.layers[0]
        for k, v in kw.items():
            setattr(layer, k, v)
        out[label] = (m, _nll(m), layer.func)

    func = copy.deepcopy(cnf.func)

    def zuko_loss(x):
        phi = tuple(func.parameters())
        ffj = FreeFormJacobianTransform(func, 0.0, cnf.T, phi, atol=cnf.atol, rtol=cnf.rtol,
                                        exact=True)  # fmt: skip
        z, ladj = ffj.call_and_ladj(x)
        return -(standard_normal_log_prob(z) + ladj).mean()

    out["zuko"] = (func, zuko_loss, func)
    try:
        import torchdyn  # noqa: F401
    except Exception as err:
        print(f"torchdyn: not included ({type(err).__name__}: {str(err)[:80]})")
    return out


def bare_seconds(model: nn.Module, x: torch.Tensor, nfe: int, repeats: int) -> float:
    """``nfe`` evaluations of the dynamics with their exact trace at ``x`` and one backward
    pass through all of them: what a solver with no overhead would cost."""
    layer = model.flow.layers[0]
    dyn = layer.dynamics
    t = torch.tensor(0.25)
    state = (x, x.new_zeros(len(x)))

    def once():
        total = 0.0
        for _ in range(nfe):
            dx, div = dyn(t, state)
            total = total + dx.sum() + div.sum()
        total.backward()

    once()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--chunk", type=int, default=5, help="iterations per competitor per repeat")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pretrain", type=int, default=300, help="iterations before timing")
    p.add_argument("--dynamics", default="fourier", choices=("fourier", "concatsquash"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    comps = competitors(a.pretrain, a.batch, a.dynamics)
    counters = {k: Counter(net) for k, (_, _, net) in comps.items()}
    comps = dict(sorted(comps.items(), key=lambda kv: kv[0] != "zuko"))
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, (m, _, _) in comps.items()}
    dist = get_toy("8gaussians")
    gen = torch.Generator().manual_seed(0)
    times = {k: [] for k in comps}
    fwd = {k: [] for k in comps}
    bwd = {k: [] for k in comps}

    def step(name, x, record):
        _, loss_fn, _ = comps[name]
        c = counters[name]
        c.calls = 0
        t0 = time.perf_counter()
        loss = loss_fn(x)
        n_fwd = c.calls
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()
        dt = time.perf_counter() - t0
        if record:
            times[name].append(dt)
            fwd[name].append(n_fwd)
            bwd[name].append(c.calls - n_fwd)

    warm = [dist.sample(a.batch, gen) for _ in range(a.warmup)]
    for name in comps:
        for x in warm:
            step(name, x, False)
    names = list(comps)
    for r in range(a.repeats):
        batches = [dist.sample(a.batch, gen) for _ in range(a.chunk)]
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            for x in batches:
                step(name, x, True)
    med = {k: statistics.median(v) for k, v in times.items()}
    nf = {k: statistics.mean(v) for k, v in fwd.items()}
    nb = {k: statistics.mean(v) for k, v in bwd.items()}
    ref = "neuralode (direct)"
    x = dist.sample(a.batch, gen)
    bare = bare_seconds(comps[ref][0], x, round(nf[ref]), max(3, a.repeats))
    rows = [["competitor", "ms/iter", "NFE fwd", "NFE bwd", "ms per fwd NFE",
             "neuralode faster: raw", "at equal NFE"]]  # fmt: skip
    for k in comps:
        per = med[k] / nf[k]
        rows.append([k, f"{1000 * med[k]:.1f}", f"{nf[k]:.1f}", f"{nb[k]:.1f}",
                     f"{1000 * per:.3f}", f"{med[k] / med[ref]:.2f}×",
                     f"{per / (med[ref] / nf[ref]):.2f}×"])  # fmt: skip
    rows.append(["bare (no solver)", f"{1000 * bare:.1f}", f"{nf[ref]:.0f}", "0",
                 f"{1000 * bare / round(nf[ref]):.3f}", f"{bare / med[ref]:.2f}×", ""])  # fmt: skip
    print(f"8 Gaussians, batch {a.batch}, after {a.pretrain} iterations of training; "
          f"{a.repeats} repeats × {a.chunk} iterations, "
          f"{a.threads} thread(s); ratios against {ref}")  # fmt: skip
    print(table(rows))
    print(f"neuralode (direct) costs {med[ref] / bare:.2f}× its bare evaluations")
    for peer in ("zuko", "neuralode on torchdiffeq"):
        raw = med[peer] / med[ref]
        eq = (med[peer] / nf[peer]) / (med[ref] / nf[ref])
        print(
            f"vs {peer}: {raw:.2f}× raw, {eq:.2f}× at equal NFE (goal ≥ 2: "
            f"{'met' if eq >= 2 else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
