# CMake toolchain for ci/build --arch aarch64: Debian's cross compilers, and
# the arm64 libraries installed beside the build machine's (Debian multiarch,
# /usr/lib/aarch64-linux-gnu), so no sysroot is needed.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
# Programs (protoc) are the build machine's; libraries and headers the target's.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
# Target programs CMake runs while configuring go through the emulator.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64)
