# The vendored core's sources: vendor/ filled (submodule, else the pinned PyPI sdist) and checked against the
# pin, then mirrored into the build folder with patches/*.patch applied (vendor/ itself is never edited).
set(SDCPP_VENDOR_DIR "${PROJECT_SOURCE_DIR}/vendor/stable-diffusion.cpp")
# What gets compiled.
set(SDCPP_CORE_DIR "${CMAKE_BINARY_DIR}/core-src")
set(SDCPP_CORE_COMMIT "90e87bc")
set(SDCPP_CORE_VERSION "master-596-90e87bc")

execute_process(
  COMMAND "${Python_EXECUTABLE}" "${PROJECT_SOURCE_DIR}/tools/vendor_core.py" --dest "${SDCPP_VENDOR_DIR}"
  RESULT_VARIABLE vendor_result)
if(NOT vendor_result EQUAL 0)
  message(FATAL_ERROR "The vendored stable-diffusion.cpp sources are missing (see the message above). "
                      "Run `git submodule update --init --recursive` and build again.")
endif()
execute_process(
  COMMAND "${Python_EXECUTABLE}" "${PROJECT_SOURCE_DIR}/tools/patch_core.py"
          --core "${SDCPP_VENDOR_DIR}" --patches "${PROJECT_SOURCE_DIR}/patches"
          --dest "${SDCPP_CORE_DIR}" --commit "${SDCPP_CORE_COMMIT}"
  RESULT_VARIABLE patch_result)
if(NOT patch_result EQUAL 0)
  message(FATAL_ERROR "Our patches do not apply to the vendored core (see the message above).")
endif()
# Editing a patch re-runs the configure step, which rebuilds the mirror.
file(GLOB SDCPP_PATCHES CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/patches/*.patch")
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${SDCPP_PATCHES})
