# The patched core (target stable-diffusion) and ggml, from the mirror core_sources.cmake made.
add_subdirectory("${SDCPP_CORE_DIR}" vendor EXCLUDE_FROM_ALL)

# The core derives model sizes from tensor shapes; a malformed file can make it divide by zero while building
# the model. With trapping instructions able to throw, bindings/runtime.cpp turns that SIGFPE on the core
# thread into an exception that ends the call (Linux + GCC: the unwinder passes signal frames there; on AArch64
# integer division does not trap at all).
set(SDCPP_FPE_TO_EXCEPTION OFF)
if(CMAKE_SYSTEM_NAME STREQUAL "Linux" AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")  # Clang lacks it for traps
  target_compile_options(stable-diffusion PRIVATE -fnon-call-exceptions)
  set(SDCPP_FPE_TO_EXCEPTION ON)
endif()

# The core takes its version from `git describe`, which in a filled (non-git) tree would describe our repo.
set_source_files_properties("${SDCPP_CORE_DIR}/src/version.cpp"
  DIRECTORY "${SDCPP_CORE_DIR}"
  PROPERTIES COMPILE_DEFINITIONS "SDCPP_BUILD_COMMIT=${SDCPP_CORE_COMMIT};SDCPP_BUILD_VERSION=${SDCPP_CORE_VERSION}")
