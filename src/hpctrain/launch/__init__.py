"""Starting training runs: `local` (mpirun, horovodrun or supervised processes on this node), `sweep`
(one run per worker count, then the scaling report), `slurm` (the same sweep as batch jobs, from the
templates in `templates/`, which ship with the package)."""
