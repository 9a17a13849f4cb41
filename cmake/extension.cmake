# The Python extension modules: sdcpp_py._core (bindings/*.cpp, shipped) and, with SDCPP_PY_TESTING,
# sdcpp_py._test_hooks (bindings/testing/*.cpp: the test suite's hooks, never in release wheels). Each links the
# static core; in the portable build both use the same shared ggml, so a CPU variant loaded by `import
# sdcpp_py` serves the hooks too.
set(PYBIND11_FINDPYTHON ON)
find_package(pybind11 3 CONFIG REQUIRED)

# What both modules need to read the core's structs as the core compiled them.
function(sdcpp_py_extension name)
  pybind11_add_module(${name} ${ARGN})
  target_link_libraries(${name} PRIVATE stable-diffusion)
  target_compile_features(${name} PRIVATE cxx_std_17)
  # ggml_tensor's layout depends on GGML_MAX_NAME: the core compiles ggml with 128, so must we.
  target_compile_definitions(${name} PRIVATE GGML_MAX_NAME=128)
  if(NOT MSVC)
    target_compile_options(${name} PRIVATE -Wall -Wextra)
  endif()
  # The core's headers are not ours to warn about.
  get_target_property(core_includes stable-diffusion INTERFACE_INCLUDE_DIRECTORIES)
  target_include_directories(${name} SYSTEM PRIVATE ${core_includes})
  install(TARGETS ${name} LIBRARY DESTINATION sdcpp_py COMPONENT python)
endfunction()

file(GLOB SDCPP_BINDING_SOURCES CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/bindings/*.cpp")
sdcpp_py_extension(_core ${SDCPP_BINDING_SOURCES})
set(patch_names "")
foreach(patch IN LISTS SDCPP_PATCHES)
  get_filename_component(patch_name "${patch}" NAME_WE)
  string(APPEND patch_names "${patch_name},")
endforeach()
target_compile_definitions(_core PRIVATE SDCPP_BACKEND="${SDCPP_BACKEND}" "SDCPP_CORE_PATCHES=\"${patch_names}\"")
if(SDCPP_FPE_TO_EXCEPTION)
  target_compile_definitions(_core PRIVATE SDCPP_FPE_TO_EXCEPTION)
endif()
set(SDCPP_PY_MODULES _core)

if(SDCPP_PY_TESTING)
  file(GLOB SDCPP_TESTING_SOURCES CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/bindings/testing/*.cpp")
  sdcpp_py_extension(_test_hooks ${SDCPP_TESTING_SOURCES})
  list(APPEND SDCPP_PY_MODULES _test_hooks)
endif()
