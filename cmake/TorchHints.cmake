# Points find_package(Torch) at what it needs, found on this machine rather
# than written in: torch's CMake prefix (from the Python interpreter's torch),
# and, for a CUDA build of torch, the CUDA toolkit, the nvrtc library that
# ships in the nvidia-* wheels (a bare system toolkit may lack it), and a
# default TORCH_CUDA_ARCH_LIST (without one, torch's config tries to detect
# GPUs by compiling CUDA code, which fails on a machine with none).
# Every value can be overridden by setting it before including this file.
include_guard(GLOBAL)

find_package(Python3 COMPONENTS Interpreter QUIET)

function(_droppath_python out code)
  if(Python3_Interpreter_FOUND)
    execute_process(
      COMMAND "${Python3_EXECUTABLE}" -c "${code}"
      OUTPUT_VARIABLE _value OUTPUT_STRIP_TRAILING_WHITESPACE
      ERROR_QUIET RESULT_VARIABLE _rc)
    if(_rc EQUAL 0)
      set(${out} "${_value}" PARENT_SCOPE)
      return()
    endif()
  endif()
  set(${out} "" PARENT_SCOPE)
endfunction()

if(NOT Torch_DIR)
  _droppath_python(_droppath_torch_prefix "import torch; print(torch.utils.cmake_prefix_path)")
  if(_droppath_torch_prefix)
    list(APPEND CMAKE_PREFIX_PATH "${_droppath_torch_prefix}")
  endif()
endif()

_droppath_python(_droppath_torch_cuda "import torch; print(torch.version.cuda or '')")
if(_droppath_torch_cuda)
  if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
    set(ENV{TORCH_CUDA_ARCH_LIST} "8.0;8.6;8.9;9.0+PTX")
  endif()
  if(NOT CUDA_TOOLKIT_ROOT_DIR)
    set(_droppath_cuda_candidates)
    if(DEFINED ENV{CUDA_HOME})
      list(APPEND _droppath_cuda_candidates "$ENV{CUDA_HOME}")
    endif()
    find_program(_droppath_nvcc nvcc)
    if(_droppath_nvcc)
      get_filename_component(_droppath_nvcc_real "${_droppath_nvcc}" REALPATH)
      get_filename_component(_droppath_nvcc_root "${_droppath_nvcc_real}/../.." ABSOLUTE)
      list(APPEND _droppath_cuda_candidates "${_droppath_nvcc_root}")
    endif()
    list(APPEND _droppath_cuda_candidates "/usr/local/cuda")
    foreach(_root IN LISTS _droppath_cuda_candidates)
      if(EXISTS "${_root}/include/cuda_runtime.h" AND EXISTS "${_root}/bin/nvcc")
        set(CUDA_TOOLKIT_ROOT_DIR "${_root}" CACHE PATH "CUDA toolkit root")
        break()
      endif()
    endforeach()
  endif()
  if(CUDA_TOOLKIT_ROOT_DIR AND NOT CMAKE_CUDA_COMPILER)
    set(CMAKE_CUDA_COMPILER "${CUDA_TOOLKIT_ROOT_DIR}/bin/nvcc" CACHE FILEPATH "nvcc")
  endif()
  if(NOT CUDA_nvrtc_LIBRARY)
    find_library(CUDA_nvrtc_LIBRARY nvrtc HINTS "${CUDA_TOOLKIT_ROOT_DIR}/lib64" "${CUDA_TOOLKIT_ROOT_DIR}/lib")
    if(NOT CUDA_nvrtc_LIBRARY)
      _droppath_python(_droppath_nvrtc
        "import glob, os, nvidia; print(next(iter(sorted(p for base in nvidia.__path__ for p in glob.glob(os.path.join(base, '*', 'lib', 'libnvrtc.so*')) if 'builtins' not in p and '.alt.' not in p)), ''))")
      if(_droppath_nvrtc)
        set(CUDA_nvrtc_LIBRARY "${_droppath_nvrtc}" CACHE FILEPATH "nvrtc library" FORCE)
      endif()
    endif()
  endif()
endif()
