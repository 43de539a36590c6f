# ctest script (test_cpu_aarch64_qemu, tests/CMakeLists.txt): configure and build the cross
# project tests/cross with TOOLCHAIN in WORK_DIR, then run its tests through its emulator.
#   -DSOURCE_DIR= -DWORK_DIR= -DGENERATOR= -DTOOLCHAIN= -DCXX= -DEMULATOR= [-DJOBS=1]
# CXX and EMULATOR are the cross compiler and qemu found by the main build; when either is missing
# this prints "diffattn-cross: SKIPPED" (the test's SKIP_REGULAR_EXPRESSION: ctest reports it as
# skipped, never as passed). WORK_DIR is kept between runs: a rerun rebuilds only what changed.
foreach(tool CXX EMULATOR)
  if(NOT EXISTS "${${tool}}")
    message("diffattn-cross: SKIPPED: ${tool} not found (${${tool}}); scripts/deps.sh installs "
            "g++-aarch64-linux-gnu and qemu-user on x86-64 hosts")
    return()
  endif()
endforeach()
if(NOT JOBS)
  set(JOBS 1)
endif()
set(build ${WORK_DIR}/build)
function(run)
  string(TIMESTAMP t0 "%s")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)  # output goes straight to ctest's log
  string(TIMESTAMP t1 "%s")
  math(EXPR dt "${t1} - ${t0}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "diffattn-cross: failed (${rc}) after ${dt} s: ${ARGN}")
  endif()
  message(STATUS "diffattn-cross: ${dt} s: ${ARGN}")
endfunction()
run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/cross -B ${build} -G ${GENERATOR}
    -DCMAKE_TOOLCHAIN_FILE=${TOOLCHAIN} -DDIFFATTN_SOURCE_DIR=${SOURCE_DIR})
run(${CMAKE_COMMAND} --build ${build} --parallel ${JOBS})
run(${CMAKE_CTEST_COMMAND} --test-dir ${build} --output-on-failure --no-tests=error)
