"""Helpers several test files share."""
import math

import numpy as np
from scipy import stats
import pytest
import torch
from threadpoolctl import threadpool_limits


def randomize_batchnorm(model, seed=0):
    """Non-trivial BN statistics and affine parameters, so summands differ from their inputs."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(n, generator=generator))
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.5)
    return model


def run_cli_child(args, fault_env, fault, output_path):
    """`repro ARGS` in a child process, its output to ``output_path``; exits with the CLI's exit code.

    Started from a fork server that imported torch and the stages once (see ``cli_process``), so a child
    starts at once, yet never inherits a parent's running threads (OpenMP and the like do not survive fork).
    """
    import os
    import sys

    from residual_stream.cli import main

    descriptor = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.environ.pop(fault_env, None)
    if fault:
        os.environ[fault_env] = fault
    code = 1
    try:
        main([str(a) for a in args], prog_name="repro")
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def cli_process(args, fault_env, fault, output_path):
    """An unstarted process that runs ``run_cli_child``."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    if not getattr(cli_process, "preloaded", False):
        context.set_forkserver_preload(["torch", "helpers", "residual_stream.cli", "repro.pipeline"])
        cli_process.preloaded = True
    return context.Process(target=run_cli_child, args=(list(map(str, args)), fault_env, fault, str(output_path)))


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Small matrices: on shared cores, BLAS threads contending slowed these tests several-fold."""
    with threadpool_limits(limits=1):
        yield


def fresh_rng(label: str) -> np.random.Generator:
    """A generator seeded from the OS's entropy, its seed printed for replay."""
    seed = np.random.SeedSequence().entropy
    print(f"{label}: seed = {seed}")
    return np.random.default_rng(seed)


# Two-sided false-alarm rate of one Monte-Carlo comparison: about forty of them run per suite.
MC_FALSE_ALARM = 1e-4


def assert_matches_monte_carlo(values, closed_form: float, allowance: float, label: str = "") -> None:
    """The mean of ``values`` within Student's t bound (at MC_FALSE_ALARM, n − 1 degrees of freedom) plus
    ``allowance`` of ``closed_form``. A fixed multiple of the standard error would undercover at a few draws."""
    values = np.asarray(values, dtype=float)
    mean, sd = values.mean(), values.std(ddof=1)
    bound = stats.t.ppf(1 - MC_FALSE_ALARM / 2, values.size - 1) * sd / math.sqrt(values.size) + allowance
    print(f"{label}: closed form {closed_form:.4f}, MC {mean:.4f} ± {sd:.4f} (n = {values.size}), bound {bound:.4f}")
    assert abs(mean - closed_form) < bound, (label, mean, closed_form, bound)
