#!/usr/bin/env bash
# The cpu-budget tables committed under reports/, one thread per row:
#   bash scripts/reproduce_cpu_tables.sh a    # iwae_table1 (3 of its 10 rows), then realnvp
#   bash scripts/reproduce_cpu_tables.sh b    # beta_rd, then aevb_fig2
#   bash scripts/reproduce_cpu_tables.sh c    # bbans, then the other 7 rows of iwae_table1
# then write the reports and the README section:
#   bash scripts/reproduce_cpu_tables.sh report
# Re-running skips finished rows and resumes unfinished ones from their last checkpoint.
# The committed reports were made on 2026-12-01/02 on this project's 2-core machine with nothing
# else running: `a` and `b` side by side, then `c` (its bbans and 1-layer rows beside the 2-layer
# rows, as two invocations of the iwae_table1 command with the rows split between them).
set -eu
export OMP_NUM_THREADS=1
export VAELAB_DATA_DIR=${VAELAB_DATA_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
R=${VAELAB_REPRODUCE:-vaelab-reproduce}
Q="+trainer.enable_progress_bar=false"
IWAE_ROWS="rows=[vae_1l_k1,iwae_1l_k5,vae_2l_k1]"
case "${1:-}" in
  a)
    $R table=iwae_table1 budget=cpu $IWAE_ROWS $Q
    $R table=realnvp budget=cpu $Q
    ;;
  b)
    $R table=beta_rd budget=cpu $Q
    $R table=aevb_fig2 budget=cpu $Q
    ;;
  c)
    $R table=bbans budget=cpu $Q
    $R table=iwae_table1 budget=cpu "rows=[vae_1l_k5,iwae_1l_k50,vae_1l_k50]" $Q
    $R table=iwae_table1 budget=cpu "rows=[vae_2l_k5,iwae_2l_k5,vae_2l_k50,iwae_2l_k50]" $Q
    ;;
  report)
    for t in iwae_table1 aevb_fig2 beta_rd realnvp bbans; do
      $R table=$t budget=cpu report_only=true report_dir=reports/$t/cpu
    done
    $R readme=README.md
    ;;
  *) echo "usage: $0 a|b|c|report" >&2; exit 2 ;;
esac
