"""Shared fixtures: the real default model (loaded once) and a tiny random Llama in both file formats."""
from __future__ import annotations

import os
import sys
from pathlib import Path

# Under pytest-xdist (`make test` runs two workers on this 2-core machine) each worker computes on one thread,
# TVM's pool included, which is sized when codegen is first imported: set before anything imports it.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    os.environ.setdefault("SQLM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(int(os.environ.get("SQLM_TEST_THREADS", "1" if WORKER else "2")))

from tiny_llama import write_tiny_llama  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def sqlm_home(tmp_path_factory):
    """Keep the catalog, kernel cache and hardware profile of a test run out of the user's ~/.sqlm and
    ~/.cache/sqlm: the machine is measured once per run, whatever the number of catalogs."""
    home = tmp_path_factory.mktemp("sqlm_home")
    os.environ["SQLM_HOME"] = str(home)
    # kernels and the machine's profile are shared by the run's workers: each kernel is compiled once per run
    shared = tmp_path_factory.getbasetemp().parent if WORKER else tmp_path_factory.getbasetemp()
    os.environ["SQLM_KERNEL_CACHE"] = str(shared / "kernels")
    os.environ["SQLM_CACHE_DIR"] = str(shared / "machine_cache")
    return home


@pytest.fixture
def machine_profile(tmp_path, monkeypatch):
    """store(profile): this test's machine has `profile` stored (a cache directory of its own, so a made-up
    profile never reaches other tests)."""
    from dataclasses import asdict

    from catalog.hardware import store_part
    from planner.hardware_calibration import kernel_code_stamp

    monkeypatch.setenv("SQLM_CACHE_DIR", str(tmp_path / "machine_cache"))
    return lambda profile: store_part({**asdict(profile), **kernel_code_stamp()})


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def local_ray():
    """One small local Ray for every test of replicas (2 CPUs, an 80 MiB object store, no dashboard)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, object_store_memory=80 << 20, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def smollm2():
    from catalog.registry import resolve_model

    return resolve_model("smollm2")


@pytest.fixture(scope="session")
def smollm2_fp32(smollm2):
    from operators.llama import build_model

    return build_model(smollm2, "fp32")
