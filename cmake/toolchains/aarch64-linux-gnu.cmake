# CMake toolchain: aarch64 Linux with Debian's cross compiler (g++-aarch64-linux-gnu) and the
# results run under qemu-user (qemu-aarch64); scripts/deps.sh installs both on x86-64 hosts.
#   cmake -S tests/cross -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake
#
# Where things are on Debian 12:
#   the target's glibc / libstdc++ (headers and libraries)  /usr/aarch64-linux-gnu/{include,lib}
#   arch-independent header-only deps                       /usr/include/eigen3, /usr/include/doctest,
#     and their CMake configs                               /usr/share/eigen3/cmake, /usr/lib/cmake/doctest
# Debian's cross g++ (built --with-sysroot=/) searches /usr/aarch64-linux-gnu/include and then
# /usr/include, last: header-only deps in /usr/include are found without any -I, and the target's
# own libc headers still win over the host's. Because /usr/include is one of the compiler's
# implicit include directories, CMake never passes it as -I/-isystem (which would put the host's
# glibc headers first). The find-root modes below mirror that order: the target root first, the
# host second, for headers and CMake package configs only; libraries come from the target root
# alone, so no x86-64 library is ever linked. (CMAKE_LIBRARY_ARCHITECTURE is aarch64-linux-gnu,
# so a host package search looks in /usr/lib/aarch64-linux-gnu/cmake, not the x86-64 one.)
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(DIFFATTN_CROSS_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${DIFFATTN_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${DIFFATTN_CROSS_TRIPLE}-g++)

set(CMAKE_FIND_ROOT_PATH /usr/${DIFFATTN_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)  # tools run on the host
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)   # target libraries only
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)   # target headers, then arch-independent host ones
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)   # Eigen3Config.cmake, doctestConfig.cmake on the host

# add_test(COMMAND <target>), try_run() and ctest run aarch64 binaries through qemu-user; -L is
# where it finds the target's dynamic loader and shared libraries.
# (Without qemu installed, the bare name stays and running a test fails saying so.)
find_program(DIFFATTN_QEMU_AARCH64 NAMES qemu-aarch64 qemu-aarch64-static)
if(DIFFATTN_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${DIFFATTN_QEMU_AARCH64} -L /usr/${DIFFATTN_CROSS_TRIPLE})
else()
  set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/${DIFFATTN_CROSS_TRIPLE})
endif()
