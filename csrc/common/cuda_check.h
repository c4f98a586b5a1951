// Error checks for CUDA launchers: throw (never exit) so a failure reaches the user's Python.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#define ACCDUMP_CUDA_CHECK(expr)                                                          \
  do {                                                                                   \
    const cudaError_t err_ = (expr);                                                     \
    if (err_ != cudaSuccess) {                                                           \
      throw std::runtime_error(std::string("accdump: CUDA error ") +                     \
                               cudaGetErrorString(err_) + " at " + __FILE__ + ":" +      \
                               std::to_string(__LINE__));                                \
    }                                                                                    \
  } while (0)

#define ACCDUMP_LAUNCH_CHECK() ACCDUMP_CUDA_CHECK(cudaGetLastError())
