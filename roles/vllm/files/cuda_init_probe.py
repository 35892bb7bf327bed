#!/usr/bin/env python3
"""Does CUDA initialise on this machine? cuInit(0) through libcuda.so.1 with ctypes, no torch.

Prints one JSON line: ok, library, cuInit (the CUresult), error (its name), driver_cuda
(cuDriverGetVersion as "13.0"), devices (cuDeviceGetCount). Exit 0 when cuInit succeeded
and a device is visible, 1 when CUDA does not initialise, 2 when libcuda.so.1 cannot be
loaded (no NVIDIA driver). Standard library only: `make gpu-verify` and lab/gpu_smoke.py run
it with whatever python3 the machine has. Run as root, cuInit may create /dev/nvidia-uvm
(through the setuid nvidia-modprobe); check that node before running this.
"""

from __future__ import annotations

import ctypes
import json
import sys
from typing import Any

LIBRARY = "libcuda.so.1"
# What the usual failures mean on a server (CUDA driver API, cuda.h CUresult values).
HINTS = {
    3: "CUDA_ERROR_NOT_INITIALIZED",
    35: "driver too old for this CUDA (CUDA_ERROR_INSUFFICIENT_DRIVER)",
    100: "no CUDA device visible (CUDA_ERROR_NO_DEVICE): /dev/nvidia* or nvidia-uvm missing",
    802: "system not yet initialized (CUDA_ERROR_SYSTEM_NOT_READY): on an NVSwitch host the"
    " fabric manager has not finished",
    999: "CUDA_ERROR_UNKNOWN: often nvidia-uvm not loaded, or a driver/library mismatch",
}


def error_name(lib: Any, code: int) -> str:
    """cuGetErrorName's name for a CUresult, or the number."""
    name = ctypes.c_char_p()
    try:
        if lib.cuGetErrorName(code, ctypes.byref(name)) == 0 and name.value:
            return name.value.decode()
    except AttributeError:
        pass
    return f"CUresult {code}"


def probe(lib: Any) -> dict[str, Any]:
    """cuInit(0), then the driver's CUDA version and the device count."""
    code = int(lib.cuInit(0))
    result: dict[str, Any] = {"ok": False, "cuInit": code, "error": "", "driver_cuda": "",
                              "devices": 0}  # fmt: skip
    version = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value:
        result["driver_cuda"] = f"{version.value // 1000}.{version.value % 1000 // 10}"
    if code != 0:
        result["error"] = error_name(lib, code)
        result["hint"] = HINTS.get(code, "")
        return result
    count = ctypes.c_int(0)
    count_code = int(lib.cuDeviceGetCount(ctypes.byref(count)))
    result["devices"] = count.value
    result["ok"] = count_code == 0 and count.value > 0
    if not result["ok"]:
        result["error"] = (f"cuDeviceGetCount: {error_name(lib, count_code)},"
                           f" {count.value} device(s)")
    return result


def main(argv: list[str]) -> int:
    library = argv[1] if len(argv) > 1 else LIBRARY
    try:
        lib = ctypes.CDLL(library)
    except OSError as exc:
        print(json.dumps({"ok": False, "library": library, "cuInit": None,
                          "error": f"cannot load {library}: {exc}"}))  # fmt: skip
        return 2
    result = {"library": library, **probe(lib)}
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
