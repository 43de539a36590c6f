# ctest script: install diffattn from SOURCE_DIR into a fresh prefix, then configure, build and
# run tests/consumer/project against it with find_package(diffattn CONFIG).
file(REMOVE_RECURSE ${WORK_DIR})
set(build ${WORK_DIR}/diffattn-build)
set(prefix ${WORK_DIR}/prefix)
set(consumer ${WORK_DIR}/consumer-build)
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()
run(${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${build} -G ${GENERATOR} -DCMAKE_CXX_COMPILER=${CXX}
    -DDIFFATTN_BUILD_TESTS=OFF -DDIFFATTN_BUILD_BENCH=OFF -DDIFFATTN_BUILD_EXAMPLES=OFF
    -DDIFFATTN_CUDA=OFF -DCMAKE_INSTALL_PREFIX=${prefix})
run(${CMAKE_COMMAND} --install ${build})
run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer/project -B ${consumer} -G ${GENERATOR}
    -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_PREFIX_PATH=${prefix})
run(${CMAKE_COMMAND} --build ${consumer})
run(${consumer}/consumer)

# The same consumer with add_subdirectory(diffattn) instead of an install.
set(sub ${WORK_DIR}/subdir-project)
file(MAKE_DIRECTORY ${sub})
file(COPY ${SOURCE_DIR}/tests/consumer/project/main.cpp DESTINATION ${sub})
file(WRITE ${sub}/CMakeLists.txt "cmake_minimum_required(VERSION 3.25)
project(diffattn_subdir_consumer LANGUAGES CXX)
set(DIFFATTN_CUDA OFF CACHE STRING \"\")
add_subdirectory(\"${SOURCE_DIR}\" diffattn)
add_executable(consumer main.cpp)
target_link_libraries(consumer PRIVATE diffattn::diffattn)
")
run(${CMAKE_COMMAND} -S ${sub} -B ${sub}/build -G ${GENERATOR} -DCMAKE_CXX_COMPILER=${CXX})
run(${CMAKE_COMMAND} --build ${sub}/build)
run(${sub}/build/consumer)
