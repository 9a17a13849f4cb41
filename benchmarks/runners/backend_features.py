"""The loaded CPU backend of the sdcpp_py this interpreter imports, as one JSON line:
[portable_cpu, sorted cpu_features, fused_cpu_kernels]. portable_vs_native.py runs it under each build."""

import json

import sdcpp_py

if __name__ == "__main__":
    report = sdcpp_py.backends()
    print(json.dumps([report["portable_cpu"], sorted(report["cpu_features"]), report["fused_cpu_kernels"]]))
