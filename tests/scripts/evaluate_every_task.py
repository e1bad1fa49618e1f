"""Each task's test metrics of a freshly initialised model, in one process or under torchrun
(``torchrun --nproc_per_node=2 tests/scripts/evaluate_every_task.py DATA_DIR``): rank 0 prints
one JSON line ``{task: metrics}``. Used by tests/test_training_layer.py to check that the
metrics reduced over ranks equal one process's."""

import json
import sys

import torch

from neuralode.tasks import get_task, make_options
from neuralode.training.distributed import Distributed

# small, and chosen so that the ranks get unequal shares: 5 test batches of MNIST, one
# forecast for the trajectories (rank 1 gets none), 3 batches of series, 3 of density samples
OPTIONS = {
    "mnist": {"test_subset": 250, "train_subset": 100, "batch_size": 50, "method": "rk4"},
    "density": {"test_size": 300, "val_size": 100, "batch_size": 100},
    "timeseries": {"series": 100, "batch_size": 4},
    "spiral": {},
    "cubic": {},
}


def main() -> None:
    data_dir = sys.argv[1]
    torch.set_num_threads(1)
    dist = None
    results = {}
    for name, extra in OPTIONS.items():
        options = make_options(name, **extra, **({"data_dir": data_dir} if name == "mnist" else {}))
        if dist is None:
            dist = Distributed.from_environment(options)
        task = get_task(name)(options)
        torch.manual_seed(0)
        data = task.load_data()
        model = task.build_model().to(dist.device)
        torch.manual_seed(1)
        results[name] = task.evaluate(model, data, "test", dist.device, dist)
    if dist.is_main:
        print(json.dumps(results))
    dist.barrier()  # both ranks leave the process group together (else gloo may abort at exit)
    dist.close()


if __name__ == "__main__":
    main()
