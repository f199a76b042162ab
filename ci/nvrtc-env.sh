# shellcheck shell=bash
# ci/nvrtc-env.sh: make the CUDA 13.0 NVRTC library loadable for tests on a
# machine without a GPU or CUDA toolkit (WORKER-4012, issue 5 point 2).
# Source it (`source ci/nvrtc-env.sh`); it installs the PyPI wheel
# nvidia-cuda-nvrtc 13.0.x into a cache folder once and prepends its lib
# folder to LD_LIBRARY_PATH. cudarc (cuda-13000, dynamic-loading) dlopens
# "libnvrtc.so.13" among its candidate names, and NVRTC itself dlopens
# libnvrtc-builtins.so.13.0 from the same folder.
# Env: WORKER_ORCD_NVRTC_DIR (install folder), WORKER_ORCD_NVRTC_VERSION.
# Never fails the caller's shell: on error it prints why and returns 1.

_nvrtc_dir="${WORKER_ORCD_NVRTC_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/worker-orcd/nvrtc13}"
_nvrtc_ver="${WORKER_ORCD_NVRTC_VERSION:-13.0.88}"
_nvrtc_lib="$_nvrtc_dir/nvidia/cu13/lib"

if [ ! -e "$_nvrtc_lib/libnvrtc.so.13" ]; then
    echo "nvrtc-env: installing nvidia-cuda-nvrtc==$_nvrtc_ver into $_nvrtc_dir" >&2
    mkdir -p "$_nvrtc_dir"
    if ! python3 -m pip install --quiet --no-deps --disable-pip-version-check \
            --target "$_nvrtc_dir" "nvidia-cuda-nvrtc==$_nvrtc_ver" >&2; then
        echo "nvrtc-env: pip install of nvidia-cuda-nvrtc==$_nvrtc_ver failed; kernel compile tests cannot run" >&2
        return 1 2>/dev/null || exit 1
    fi
fi

if [ -e "$_nvrtc_lib/libnvrtc.so.13" ]; then
    case ":${LD_LIBRARY_PATH:-}:" in
        *":$_nvrtc_lib:"*) ;;
        *) export LD_LIBRARY_PATH="$_nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
    esac
    export WORKER_ORCD_NVRTC_LIB="$_nvrtc_lib"
    echo "nvrtc-env: NVRTC from $_nvrtc_lib" >&2
else
    echo "nvrtc-env: libnvrtc.so.13 not found under $_nvrtc_lib" >&2
    return 1 2>/dev/null || exit 1
fi
unset _nvrtc_dir _nvrtc_ver _nvrtc_lib
