# Debian packages with CPack's DEB generator (`make deb`): CPack needs no
# debian/ folder beside the CMake build, which already knows what goes
# where (the install components of CMakeLists.txt), and dpkg-shlibdeps
# (through CPACK_DEBIAN_PACKAGE_SHLIBDEPS) finds the Debian packages of
# the client libraries the build linked, so the dependencies follow the
# backends built.
#
#   libevq0     runtime  the shared library
#   libevq-dev  dev      header, static library, evq.pc, CMake package,
#                        man pages of section 3
#   evq-tools   tools    the evq tool, its bash completion and man page
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME evq)
set(CPACK_PACKAGE_VENDOR "The evq developers")
set(CPACK_PACKAGE_CONTACT "The evq developers <evq@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "event queues for C over memory, SQLite, PostgreSQL, Redis, NATS, Kafka and RabbitMQ")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL runtime dev tools)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# libevq0 gets a shlibs file and the ldconfig trigger
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS_POLICY ">=")
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://localhost/evq")

set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME libevq0)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SECTION libs)
set(CPACK_COMPONENT_RUNTIME_DESCRIPTION
    "event queues for C: the shared library
 One API over process memory, SQLite, PostgreSQL, Redis, NATS, Kafka and
 RabbitMQ, with handlers, a worker pool, retries, dead letters, flow
 control, periodic events and an HTTP window on the queues.")

set(_evq_deb_version "${PROJECT_VERSION}-${CPACK_DEBIAN_PACKAGE_RELEASE}")
set(CPACK_DEBIAN_DEV_PACKAGE_NAME libevq-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
# evq.pc requires jansson (the JSON payloads are jansson's json_t); the
# client libraries' -dev packages are for static links only
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS
    "libevq0 (= ${_evq_deb_version}), libjansson-dev (>= 2.14), pkg-config")
set(CPACK_DEBIAN_DEV_PACKAGE_SUGGESTS
    "libmsgpack-dev, libsimdjson-dev, libicu-dev, libsqlite3-dev, libhiredis-dev, libnats-dev, librdkafka-dev, libpq-dev, librabbitmq-dev, libmicrohttpd-dev")
set(CPACK_COMPONENT_DEV_DESCRIPTION
    "event queues for C: headers, static library and manual
 What a program built against evq needs: evq.h, libevq.a, evq.pc, the
 CMake package evq::evq and the man pages of section 3.")

set(CPACK_DEBIAN_TOOLS_PACKAGE_NAME evq-tools)
set(CPACK_DEBIAN_TOOLS_PACKAGE_SECTION utils)
set(CPACK_DEBIAN_TOOLS_PACKAGE_SUGGESTS "bash-completion")
set(CPACK_COMPONENT_TOOLS_DESCRIPTION
    "event queues for C: the evq command-line tool
 Produce, consume, inspect, pause, replay dead letters, schedule, relay,
 benchmark and serve a dashboard of evq queues (evq(1)).")

include(CPack)
