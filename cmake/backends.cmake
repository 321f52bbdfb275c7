# The backends evq can be built with: the one list.  CMakeLists.txt reads it
# for the build options, the client libraries and the sources; it becomes
# evq_backends.h in the build folder, which gives src/queue.c its table of
# URL schemes and the error text for a scheme left out.
#
#   name | pkg-config module (none: always built) | URL schemes
set(EVQ_BACKENDS
  "memory||memory"
  "sqlite|sqlite3>=3.35|sqlite"
  "redis|hiredis>=0.14|redis,redis+unix,redis+sentinel"
  "nats|libnats>=3.4|nats"
  "kafka|rdkafka>=2.0|kafka"
  "postgres|libpq>=14|postgres,postgresql"
  "amqp|librabbitmq>=0.11|amqp,amqps")

# For each backend with a client library, EVQ_WITH_<NAME> = AUTO (built when
# the library is found), ON (the library is required) or OFF.  Sets
# EVQ_BACKEND_SOURCES, EVQ_BACKEND_TARGETS (the libraries' imported
# targets), EVQ_BACKEND_PC_LIBS (for evq.pc), EVQ_CONFIG_BACKENDS (for
# evqConfig.cmake), EVQ_HAVE_<NAME> and writes
# ${CMAKE_BINARY_DIR}/evq_backends.h.  For every backend, built or not:
# EVQ_BACKEND_NAMES, EVQ_BACKEND_MODULE_<name>, EVQ_BACKEND_SCHEMES_<name>
# (comma-separated).
set(EVQ_BACKEND_NAMES "")
set(EVQ_BACKEND_SOURCES "")
set(EVQ_BACKEND_TARGETS "")
set(EVQ_BACKEND_PC_LIBS "")
set(EVQ_CONFIG_BACKENDS "")
set(_built "")
set(_schemes "")
set(_omitted "")
set(_known "")
foreach(entry ${EVQ_BACKENDS})
  string(REPLACE "|" ";" f "${entry}")
  list(GET f 0 name)
  list(GET f 1 module)
  list(GET f 2 schemes)
  list(APPEND EVQ_BACKEND_NAMES ${name})
  set(EVQ_BACKEND_MODULE_${name} "${module}")
  set(EVQ_BACKEND_SCHEMES_${name} "${schemes}")
  string(REPLACE "," ";" schemes "${schemes}")
  string(TOUPPER "${name}" NAME)
  set(build ON)
  if(module)
    set(EVQ_WITH_${NAME} AUTO CACHE STRING
        "Build the ${name} backend: AUTO (when ${module} is found), ON or OFF")
    set_property(CACHE EVQ_WITH_${NAME} PROPERTY STRINGS AUTO ON OFF)
    set(mode "${EVQ_WITH_${NAME}}")
    if(mode STREQUAL "OFF")
      set(build OFF)
    elseif(mode STREQUAL "ON")
      pkg_check_modules(${NAME} REQUIRED IMPORTED_TARGET ${module})
    elseif(mode STREQUAL "AUTO")
      pkg_check_modules(${NAME} QUIET IMPORTED_TARGET ${module})
      set(build ${${NAME}_FOUND})
    else()
      message(FATAL_ERROR "EVQ_WITH_${NAME} is '${mode}': AUTO, ON or OFF")
    endif()
    if(build)
      list(APPEND EVQ_BACKEND_TARGETS PkgConfig::${NAME})
      string(APPEND EVQ_CONFIG_BACKENDS
             "pkg_check_modules(${NAME} REQUIRED IMPORTED_TARGET ${module})\n")
      foreach(lib ${${NAME}_LIBRARIES})
        string(APPEND EVQ_BACKEND_PC_LIBS " -l${lib}")
      endforeach()
    endif()
  endif()
  set(EVQ_HAVE_${NAME} ${build})
  foreach(s ${schemes})
    list(APPEND _known "${s}")
    if(build)
      string(APPEND _schemes "    X(${name}, \"${s}\") \\\n")
    else()
      string(APPEND _omitted "    X(${name}, \"${s}\", \"${NAME}\", \"${module}\") \\\n")
    endif()
  endforeach()
  if(build)
    list(APPEND EVQ_BACKEND_SOURCES src/backends/${name}.c)
    list(APPEND _built ${name})
    string(APPEND _defines "#define EVQ__HAVE_${NAME} 1\n")
  else()
    string(APPEND _defines "#define EVQ__HAVE_${NAME} 0\n")
  endif()
endforeach()
string(STRIP "${EVQ_BACKEND_PC_LIBS}" EVQ_BACKEND_PC_LIBS)
list(JOIN _known ", " _known_text)
list(JOIN _built ", " _built_text)
message(STATUS "evq backends: ${_built_text}")
file(WRITE ${CMAKE_BINARY_DIR}/evq_backends.h.new
"/* Written by cmake/backends.cmake: the backends this build has. */
#ifndef EVQ_BACKENDS_H
#define EVQ_BACKENDS_H
${_defines}
/* X(backend, scheme) for each URL scheme built */
#define EVQ__BACKEND_SCHEMES(X) \\
${_schemes}
/* X(backend, scheme, NAME, pkg-config module) for each scheme left out */
#define EVQ__BACKEND_OMITTED(X) \\
${_omitted}
/* every scheme evq knows, built or not */
#define EVQ__BACKEND_KNOWN \"${_known_text}\"
#endif
")
# Rewritten only when it changes, so a re-run of cmake rebuilds nothing.
file(COPY_FILE ${CMAKE_BINARY_DIR}/evq_backends.h.new
     ${CMAKE_BINARY_DIR}/evq_backends.h ONLY_IF_DIFFERENT)
