# The vendored sd-cli, linked to the very same core library: the tests' pixel oracle (tests/conftest.py
# configures it with -DSDCPP_PY_BUILD_SD_CLI=ON into build/sd-cli). Never installed.
set(cli_dir "${SDCPP_CORE_DIR}/examples")
add_executable(sd-cli
  "${cli_dir}/common/common.cpp" "${cli_dir}/common/log.cpp" "${cli_dir}/common/media_io.cpp"
  "${cli_dir}/cli/image_metadata.cpp" "${cli_dir}/cli/main.cpp")
target_include_directories(sd-cli PRIVATE "${cli_dir}")
target_link_libraries(sd-cli PRIVATE stable-diffusion zip Threads::Threads)
find_package(Threads REQUIRED)
set_target_properties(sd-cli PROPERTIES RUNTIME_OUTPUT_DIRECTORY "${CMAKE_BINARY_DIR}/bin")
