#!/usr/bin/env bash
# The cpu-budget tables committed under reports/, as run on this project's 2-core machine (shared
# with other jobs): two streams of one thread each. Re-running skips finished rows and resumes
# unfinished ones from their last checkpoint.
#   bash scripts/reproduce_cpu_tables.sh a    # iwae_table1 (3 rows)
#   bash scripts/reproduce_cpu_tables.sh b    # beta_rd, aevb_fig2, realnvp
set -u
export OMP_NUM_THREADS=1
export VAELAB_DATA_DIR=${VAELAB_DATA_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
R=${VAELAB_REPRODUCE:-vaelab-reproduce}
Q="+trainer.enable_progress_bar=false"
case "${1:-}" in
  a)
    $R table=iwae_table1 budget=cpu rows=[vae_1l_k1,iwae_1l_k5,vae_2l_k1] $Q
    ;;
  b)
    $R table=beta_rd budget=cpu $Q
    $R table=aevb_fig2 budget=cpu $Q
    $R table=realnvp budget=cpu $Q
    ;;
  *) echo "usage: $0 a|b" >&2; exit 2 ;;
esac
