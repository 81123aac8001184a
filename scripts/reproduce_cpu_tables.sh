#!/usr/bin/env bash
# The cpu-budget tables committed under reports/, one thread per row:
#   bash scripts/reproduce_cpu_tables.sh a    # iwae_table1 (3 of its 10 rows), then realnvp
#   bash scripts/reproduce_cpu_tables.sh b    # beta_rd, then aevb_fig2
# then write the reports and the README section:
#   bash scripts/reproduce_cpu_tables.sh report
# Re-running skips finished rows and resumes unfinished ones from their last checkpoint.
# On 2026-12-01 the four tables ran as separate invocations of the commands below, side by side,
# on this project's 2-core machine shared with four other engineers (load 5-14); iwae_table1's
# third row ran in its own sitting (rows=[vae_2l_k1]) beside the second row's test pass.
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
  report)
    $R table=iwae_table1 budget=cpu report_only=true report_dir=reports/iwae_table1/cpu
    for t in aevb_fig2 beta_rd realnvp; do
      $R table=$t budget=cpu report_only=true report_dir=reports/$t/cpu
    done
    $R readme=README.md
    ;;
  *) echo "usage: $0 a|b|report" >&2; exit 2 ;;
esac
