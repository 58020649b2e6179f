"""``python -m lockfs.bench``: lock cycles on lockfs beside tmpfs, measured in the same run.

By default the command mounts its own lockfs (a ``lockfs -f`` daemon started with this
Python) and its own tmpfs in a temporary directory, runs the same worker processes with the
same parameters on both, prints a table per section and unmounts both at the end, also on
errors and Ctrl-C. ``--mount DIR`` measures an existing lockfs mount instead (counters then
come from its control socket); ``--tmpfs DIR`` an existing tmpfs.

The hot and cold sections also run on a reference server, a minimal pyfuse3 + trio server with
lockfs's cache timeouts (:mod:`lockfs.bench.reference`), to show lockfs against the limit of
the framework it runs on.

Sections (see docs/benchmark.md for what each figure means and how it is measured):

* **hot**: one path, ``open(O_RDWR|O_CREAT)`` + ``flock(LOCK_EX)`` + ``close``, 1 and N
  processes;
* **cold**: a fresh chunk path each time with PBS's full lock sequence, 1 and N processes;
* **memory**: what N distinct cold locks leave behind (files, kernel slab, daemon RSS, node
  table entries), after lockfs's reclaim;
* **held**: the cost of a hot cycle on another path while many locks are held, against the
  cost with 10 held.

Modules: :mod:`.cli` (command line), :mod:`.sections` (what is measured), :mod:`.runs`
(timed runs in worker processes), :mod:`.workers` (the workers' loops), :mod:`.rounds`,
:mod:`.targets` and :mod:`.environment` (the filesystems measured and their mounting),
:mod:`.reference` and :mod:`.minimal` (reference servers), :mod:`.machine` (readings of
/proc), :mod:`.report` (tables), :mod:`.progress` (progress lines, errors).

Must run as root (it mounts filesystems and drops the page cache).
"""
