"""Slurm support: `hpctrain submit` (hpctrain.slurm.submit) and the batch templates in the repository's
slurm/ folder (horovod-srun, horovod-mpirun, multiworker, mirrored, report; shared bash in common.sh)."""
