# Writes the manual page of one backend, evq-NAME(7), from what the built
# tool says of it (`evq options SCHEME`): its options, or, for a backend
# this build left out, that it is not there and how to build it.
#   cmake -DTOOL=path/evq -DNAME=kafka -DSCHEMES=kafka -DOPTION=KAFKA
#         -DMODULE=rdkafka>=2.0 -DDATE="December 3, 2026" -DOUT=evq-kafka.7
#         -P backend_man.cmake
string(REPLACE "," ";" schemes "${SCHEMES}")
list(GET schemes 0 first)
string(TOUPPER "${NAME}" upper)
set(urls "")
foreach(s ${schemes})
  string(APPEND urls ".Li ${s}://\n")
endforeach()

# text of the tool's help, escaped for mdoc
function(mdoc_text in out)
  string(REPLACE "\\" "\\e" t "${in}")
  string(REPLACE "@SEMI@" ";" t "${t}")
  string(REGEX REPLACE "^([.'])" "\\\\&\\1" t "${t}")
  set(${out} "${t}" PARENT_SCOPE)
endfunction()

set(page ".Dd ${DATE}
.Dt EVQ-${upper} 7
.Os
.Sh NAME
.Nm evq-${NAME}
.Nd the ${NAME} backend of evq: ${first}:// queues
.Sh DESCRIPTION
")

execute_process(COMMAND "${TOOL}" options "${first}"
                RESULT_VARIABLE rc OUTPUT_VARIABLE help ERROR_VARIABLE err)
if(rc EQUAL 0)
  string(APPEND page "Queues on the URL schemes\n${urls}take the options below,\n"
         "as query parameters of the URL\n"
         ".Pq Li ${first}://...?key=value\n"
         "or, in the tool, as\n.Fl o Ar key Ns = Ns Ar value .\n"
         ".Ic evq options ${first}\nprints the same list.\n")
  # (a list splits at ';': the descriptions' own are kept apart)
  string(REPLACE ";" "@SEMI@" help "${help}")
  string(REPLACE "\n" ";" lines "${help}")
  set(open OFF)
  foreach(line ${lines})
    if(line MATCHES "^Options of (.*):$")
      if(open)
        string(APPEND page ".El\n")
      endif()
      string(APPEND page ".Ss Options of ${CMAKE_MATCH_1}\n.Bl -tag -width Ds\n")
      set(open ON)
    elseif(line MATCHES "^  ([^ ].*[^ ])  \\((.*)\\)$")
      mdoc_text("${CMAKE_MATCH_2}" what)
      string(APPEND page ".It Cm ${CMAKE_MATCH_1} Pq ${what}\n")
    elseif(line MATCHES "^      (.*)$")
      mdoc_text("${CMAKE_MATCH_1}" text)
      string(APPEND page "${text}\n")
    elseif(NOT line STREQUAL "")
      message(FATAL_ERROR "backend_man: unexpected line of 'evq options ${first}': ${line}")
    endif()
  endforeach()
  if(open)
    string(APPEND page ".El\n")
  endif()
elseif(rc EQUAL 2 AND err MATCHES "built without")
  string(APPEND page "This build of evq was made without the ${NAME} backend:
opening a queue on
${urls}fails with
.Dv EVQ_ENOTSUP
.Pq Dq this evq was built without the ${first}:// backend ,
and
.Ic evq options ${first}
says so with exit status 2.
Build evq with
.Fl DEVQ_WITH_${upper}=ON ,
which needs the client library's development files
.Pq pkg-config module Li ${MODULE} .
")
else()
  message(FATAL_ERROR "backend_man: evq options ${first} exited ${rc}: ${err}")
endif()
string(APPEND page ".Sh SEE ALSO
.Xr evq 1 ,
.Xr evq 3 ,
.Xr evq_queue_open 3
")
file(WRITE "${OUT}.new" "${page}")
file(COPY_FILE "${OUT}.new" "${OUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUT}.new")
