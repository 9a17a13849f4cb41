# The portable CPU build's install (SDCPP_PORTABLE_CPU): beside the extension modules in the package, ggml's
# two shared libraries (renamed so that another ggml in the same process, e.g. llama.cpp's, is never taken for
# ours; unversioned, as wheels hold no symlinks) and the CPU variants, which sdcpp_py/__init__.py loads from
# the package folder.
set_target_properties(ggml PROPERTIES OUTPUT_NAME sdcpp_py_ggml)
set_target_properties(ggml-base PROPERTIES OUTPUT_NAME sdcpp_py_ggml_base)
foreach(library ggml ggml-base)
  set_property(TARGET ${library} PROPERTY VERSION)
  set_property(TARGET ${library} PROPERTY SOVERSION)
endforeach()
if(APPLE)
  set(origin "@loader_path")
else()
  set(origin "$ORIGIN")
endif()
set_target_properties(${SDCPP_PY_MODULES} ggml ggml-base ${SDCPP_CPU_TARGETS} PROPERTIES INSTALL_RPATH "${origin}")
install(TARGETS ggml ggml-base LIBRARY DESTINATION sdcpp_py COMPONENT python
        RUNTIME DESTINATION sdcpp_py COMPONENT python)
install(TARGETS ${SDCPP_CPU_TARGETS} LIBRARY DESTINATION sdcpp_py COMPONENT python
        RUNTIME DESTINATION sdcpp_py COMPONENT python)
