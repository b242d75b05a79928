"""A workload suite for K-FAC (AlgoPerf-style, sized for 2 CPU cores): ``python -m benchmarks.workloads``.

Each workload (:mod:`.workloads`) is a data set shipped in a package, a network, a loss and a
step budget. Each optimizer configuration (:mod:`.optimizers`: K-FAC's defaults for both
approximations, the paper's recipe, a wide λ₀ grid, Adam and SGD-Nesterov with tuned learning
rates, kfac-jax on the autoencoders) runs from the same initial weights on the same batches
(:mod:`.runner`). The report (:mod:`.report`) gives, per workload, the iterations and seconds
each one needs to reach fixed loss targets (tuned Adam's final loss and three levels on the way
to it), a table, a plot, and the issue-10 criteria with an overall pass/fail; ``results.json``
keeps everything (per-iteration losses and K-FAC diagnostics, configurations, warnings, rejected
steps and non-finite losses per run, the machine, threads and load).

Typical uses::

    python -m benchmarks.workloads --list
    python -m benchmarks.workloads --quick                      # smoke test, ~1 min
    python -m benchmarks.workloads --only digits-tanh diabetes-mse --optimizers kfac-blockdiag adam
    python -m benchmarks.workloads --optimizers kfac-blockdiag kfac-tridiag \\
        --reuse docs/results/workloads/results.json            # new defaults vs recorded references
    python -m benchmarks.workloads --out docs/results/workloads \\
        --markdown docs/results/workloads/report.md             # the recorded baseline

Everything is deterministic for a given machine, thread count and library version: the weights,
the batches and K-FAC's sampling seed (torch's global generator is seeded before each optimizer
is built) come from the workload's seed. Iteration counts are therefore comparable across runs
and machines; seconds depend on the machine and its load, recorded with them.
"""
