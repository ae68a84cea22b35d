# A job queue for the comparison scripts (sourced). `add "FILES|COMMAND"` queues a job that may start once every
# file in FILES exists; `run_jobs LOG_DIR` runs them $SLOTS at a time (default 2: one per core of the 2-core machine),
# in the order added, each as soon as its inputs exist, so that neither core waits for the other's phase to end; it
# fails when the jobs left wait for files that no finished job wrote.
jobs=()
add() { jobs+=("$1|$2"); }
run_jobs() {
  local pending=("${jobs[@]}") running=0 i file ready
  while [ ${#pending[@]} -gt 0 ] || [ $running -gt 0 ]; do
    for i in "${!pending[@]}"; do
      [ $running -lt ${SLOTS:-2} ] || break
      ready=1
      for file in ${pending[$i]%%|*}; do [ -e $file ] || ready=0; done
      if [ $ready = 1 ]; then
        eval "${pending[$i]#*|}" & running=$((running + 1))
        unset "pending[$i]"
      fi
    done
    if [ $running = 0 ]; then
      echo "error: these parts wait for files that no finished part wrote (see $1/*.log):" >&2
      printf '  %s\n' "${pending[@]%%|*}" >&2
      exit 1
    fi
    wait -n || true
    running=$((running - 1))
  done
  jobs=()
}
