# diffattn_config_tus(<out_var> <prefix> <ext> <content>)
# Writes one generated source per shipped CUDA configuration (DIFFATTN_CUDA_CONFIG_LIST, the
# "fmt:d" pairs of the top-level CMakeLists): <content> with @fmt@ and @d@ replaced, to
# ${CMAKE_CURRENT_BINARY_DIR}/<prefix>_<fmt>_d<d>.<ext>. Returns the file paths in <out_var>;
# a caller names per-configuration targets after a file's NAME_WE.
function(diffattn_config_tus out prefix ext content)
  set(files "")
  foreach(cfg IN LISTS DIFFATTN_CUDA_CONFIG_LIST)
    string(REPLACE ":" ";" parts "${cfg}")
    list(GET parts 0 fmt)
    list(GET parts 1 d)
    set(file ${CMAKE_CURRENT_BINARY_DIR}/${prefix}_${fmt}_d${d}.${ext})
    file(CONFIGURE OUTPUT ${file} CONTENT "${content}" @ONLY)
    list(APPEND files ${file})
  endforeach()
  set(${out} ${files} PARENT_SCOPE)
endfunction()
